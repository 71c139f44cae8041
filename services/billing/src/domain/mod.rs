//! The billing domain: plans and the subscription saga, with no I/O.

pub mod plans;
pub mod ride_out;
pub mod saga;
