//! The Envoy pair: egress Envoy → mTLS → ingress Envoy → echo, from the templates in
//! deploy/envoy/ (the mapping of every setting to Tally's is in deploy/envoy/README.md).

use super::{Programs, Running, path_str};
use crate::error::BenchError;
use crate::pki::{Pki, TARGET_SERVICE};
use std::net::SocketAddr;
use std::process::Stdio;

const EGRESS_TEMPLATE: &str = include_str!("../../../deploy/envoy/egress.yaml");
const INGRESS_TEMPLATE: &str = include_str!("../../../deploy/envoy/ingress.yaml");

impl Running {
    pub(super) async fn start_envoy(
        &mut self,
        upstream: SocketAddr,
        pki: &Pki,
        programs: &Programs,
    ) -> Result<(), BenchError> {
        let ingress_admin = free_port()?;
        let ingress_port = free_port()?;
        let egress_admin = free_port()?;
        let egress_port = free_port()?;
        let target_spiffe = pki.server.id.to_string();
        let ingress = render(
            INGRESS_TEMPLATE,
            &[
                ("ADMIN_PORT", ingress_admin.to_string()),
                ("LISTEN_PORT", ingress_port.to_string()),
                ("APP_PORT", upstream.port().to_string()),
                ("CERT", path_str(&pki.server.cert)),
                ("KEY", path_str(&pki.server.key)),
                ("BUNDLE", path_str(&pki.server.bundle)),
                ("TRUST_DOMAIN", pki.server.id.trust_domain().to_string()),
                (
                    "ACCESS_LOG",
                    self.envoy_access_log("envoy-ingress", programs),
                ),
            ],
        );
        let egress = render(
            EGRESS_TEMPLATE,
            &[
                ("ADMIN_PORT", egress_admin.to_string()),
                ("LISTEN_PORT", egress_port.to_string()),
                ("UPSTREAM_PORT", ingress_port.to_string()),
                ("TARGET_SERVICE", TARGET_SERVICE.to_string()),
                ("TARGET_SNI", pki.server.id.dns_name()),
                ("TARGET_SPIFFE", target_spiffe),
                ("CERT", path_str(&pki.client.cert)),
                ("KEY", path_str(&pki.client.key)),
                ("BUNDLE", path_str(&pki.client.bundle)),
                (
                    "ACCESS_LOG",
                    self.envoy_access_log("envoy-egress", programs),
                ),
            ],
        );
        for (name, config, admin) in [
            ("envoy-ingress", ingress, ingress_admin),
            ("envoy-egress", egress, egress_admin),
        ] {
            let path = self.dir.as_path().join(format!("{name}.yaml"));
            std::fs::write(&path, config)
                .map_err(|e| BenchError::io(format!("writing {}", path.display()), e))?;
            let mut cmd = Self::command(programs, &programs.envoy);
            cmd.arg("--config-path")
                .arg(&path)
                .arg("--concurrency")
                .arg(programs.proxy_threads.to_string())
                .arg("--disable-hot-restart")
                .arg("--log-level")
                .arg("warning")
                .stdout(Stdio::null());
            self.spawn(name, cmd)?;
            self.wait_admin_ready(name, SocketAddr::from(([127, 0, 0, 1], admin)), "/ready")
                .await?;
        }
        self.entry = SocketAddr::from(([127, 0, 0, 1], egress_port));
        self.peer_entry = Some(SocketAddr::from(([127, 0, 0, 1], ingress_port)));
        Ok(())
    }

    /// The `access_log` block of a connection manager (empty unless access logs are on).
    pub(super) fn envoy_access_log(&self, name: &str, programs: &Programs) -> String {
        if !programs.access_logs {
            return String::new();
        }
        let path = self.dir.as_path().join(format!("{name}-access.log"));
        format!(
            "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: \"{}\"",
            path.display()
        )
    }
}

/// Replaces every `{{NAME}}` in `template`.
pub fn render(template: &str, values: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (k, v) in values {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    out
}

/// A port the OS handed out a moment ago (for Envoy, whose config needs fixed ports).
pub(super) fn free_port() -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::io("finding a free port", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_have_no_unfilled_placeholders_once_rendered() {
        let names = [
            "ADMIN_PORT",
            "LISTEN_PORT",
            "APP_PORT",
            "UPSTREAM_PORT",
            "TARGET_SERVICE",
            "TARGET_SNI",
            "TARGET_SPIFFE",
            "CERT",
            "KEY",
            "BUNDLE",
            "TRUST_DOMAIN",
            "ACCESS_LOG",
        ];
        let values: Vec<(&str, String)> = names.iter().map(|n| (*n, "x".to_string())).collect();
        for t in [EGRESS_TEMPLATE, INGRESS_TEMPLATE] {
            let out = render(t, &values);
            assert!(!out.contains("{{"), "{out}");
        }
    }
}
