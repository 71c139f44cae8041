//! Tally's API: the protobuf types and gRPC stubs generated from `proto/`,
//! one module per versioned package, and the descriptor set for reflection.
//!
//! This crate holds generated code and nothing else: every service, the SDK,
//! the CLI and the proxy's gateway stand on it, so it changes only when a
//! `.proto` does.

// Generated code: prost and tonic write fully qualified paths.
#![allow(
    clippy::large_enum_variant,
    clippy::doc_lazy_continuation,
    unused_qualifications
)]

pub mod common {
    pub mod v1 {
        tonic::include_proto!("tally.common.v1");
    }
}

pub mod user {
    pub mod v1 {
        tonic::include_proto!("tally.user.v1");
    }
}

pub mod poll {
    pub mod v1 {
        tonic::include_proto!("tally.poll.v1");
    }
}

pub mod events {
    pub mod v1 {
        tonic::include_proto!("tally.events.v1");
    }
}

pub mod notification {
    pub mod v1 {
        tonic::include_proto!("tally.notification.v1");
    }
}

pub mod analytics {
    pub mod v1 {
        tonic::include_proto!("tally.analytics.v1");
    }
}

pub mod billing {
    pub mod v1 {
        tonic::include_proto!("tally.billing.v1");
    }
}

pub mod payment {
    pub mod v1 {
        tonic::include_proto!("tally.payment.v1");
    }
}

/// Encoded descriptors of every Tally package, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tally_descriptor");
