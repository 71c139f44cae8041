//! Makes sure every port the plan hands out is free before anything starts,
//! so a clash is one clear message instead of a service dying in a log file.

use super::UpError;
use super::plan::Plan;
use super::platform::HOST;
use std::net::{SocketAddr, TcpListener};

/// Fails on the first allocated port something else already listens on.
pub fn check_free(plan: &Plan) -> Result<(), UpError> {
    for (port, instance) in plan.ports() {
        if let Err(e) = TcpListener::bind(SocketAddr::new(HOST, port)) {
            return Err(UpError::PortInUse {
                port,
                instance: instance.to_string(),
                reason: e.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::up::plan::{Options, build};
    use crate::up::platform::platform;

    #[test]
    fn a_busy_port_is_named_with_the_flag_to_change_it() {
        // Hold a port, then plan the platform starting on it.
        let holder = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = holder.local_addr().expect("addr").port();
        let plan = build(
            &platform(),
            &Options {
                data_dir: "/tmp/x".into(),
                base_port: port,
                replicas: vec![],
                log_format: "pretty".into(),
            },
        )
        .expect("plan");
        let err = check_free(&plan).expect_err("port is busy");
        let msg = err.to_string();
        assert!(msg.contains(&format!("port {port}")), "{msg}");
        assert!(msg.contains("user"), "{msg}");
        assert!(msg.contains("--base-port"), "{msg}");
    }
}
