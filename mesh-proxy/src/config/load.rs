//! Reading the proxy's config file: TOML text to [`Config`], the `TALLY_PROXY_*` listen-address
//! overrides from the environment, then [`Config::validate`].

use super::{Config, ConfigError};
use std::net::SocketAddr;
use std::path::Path;

impl Config {
    /// Reads, applies environment overrides, and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let mut cfg = Self::parse(&file, &text)?;
        cfg.apply_env(&file)?;
        cfg.validate(&file)?;
        Ok(cfg)
    }

    /// Parses config text without env overrides or validation; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            message: e.to_string(),
        })
    }

    /// `TALLY_PROXY_ADMIN_LISTEN`, `TALLY_PROXY_INBOUND_LISTEN`, `TALLY_PROXY_OUTBOUND_LISTEN`, `TALLY_PROXY_LOCAL_APP`,
    /// `TALLY_PROXY_GATEWAY_LISTEN`.
    fn apply_env(&mut self, file: &str) -> Result<(), ConfigError> {
        let addr = |var: &str, key: &str| -> Result<Option<SocketAddr>, ConfigError> {
            match std::env::var(var) {
                Ok(v) => v.parse().map(Some).map_err(|_| ConfigError::Invalid {
                    file: file.to_string(),
                    key: format!("{key} (env {var})"),
                    problem: format!("`{v}` is not a socket address"),
                    fix: "use host:port, e.g. 127.0.0.1:4140".into(),
                }),
                Err(_) => Ok(None),
            }
        };
        if let Some(a) = addr("TALLY_PROXY_ADMIN_LISTEN", "admin.listen")? {
            self.admin.listen = a;
        }
        if let Some(a) = addr("TALLY_PROXY_OUTBOUND_LISTEN", "outbound.listen")?
            && let Some(o) = self.outbound.as_mut()
        {
            o.listen = a;
        }
        if let Some(a) = addr("TALLY_PROXY_GATEWAY_LISTEN", "gateway.listen")?
            && let Some(g) = self.gateway.as_mut()
        {
            g.listen = a;
        }
        if let Some(a) = addr("TALLY_PROXY_INBOUND_LISTEN", "inbound.listen")?
            && let Some(i) = self.inbound.as_mut()
        {
            i.listen = a;
        }
        if let Some(a) = addr("TALLY_PROXY_LOCAL_APP", "inbound.local_app")?
            && let Some(i) = self.inbound.as_mut()
        {
            i.local_app = a;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    const MINIMAL: &str = r#"
[admin]
listen = "127.0.0.1:9901"
[outbound]
listen = "127.0.0.1:4140"
[services.user]
endpoints = ["127.0.0.1:4143"]
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse("t.toml", MINIMAL).unwrap();
        c.validate("t.toml").unwrap();
        let u = &c.services["user"];
        assert_eq!(u.retry.max_attempts, 1);
        assert_eq!(u.outlier.consecutive_5xx, 5);
        assert_eq!(u.outlier.base_ejection_time_ms, 30_000);
        assert_eq!(u.outlier.max_ejection_percent, 10);
        assert_eq!(u.retry.budget_ratio, 0.2);
        assert_eq!(c.admin.token_file, None);
        assert_eq!(
            c.target_identity("user"),
            "spiffe://tally.local/ns/default/sa/user"
        );
    }

    #[test]
    fn example_config_is_valid() {
        let c = Config::parse("proxy.toml", include_str!("../../examples/proxy.toml")).unwrap();
        c.validate("proxy.toml").unwrap();
        assert_eq!(c.services["user"].retry.max_attempts, 3);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("t.toml", &format!("{MINIMAL}\nbogus = 1\n")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn admin_token_file_is_read() {
        let text = MINIMAL.replace(
            "listen = \"127.0.0.1:9901\"",
            "listen = \"127.0.0.1:9901\"\ntoken_file = \"/run/tally/admin-token\"",
        );
        let c = Config::parse("t.toml", &text).unwrap();
        c.validate("t.toml").unwrap();
        assert_eq!(
            c.admin.token_file.as_deref(),
            Some(std::path::Path::new("/run/tally/admin-token"))
        );
    }

    #[test]
    fn serialized_config_reads_back_the_same() {
        let c = Config::parse("proxy.toml", include_str!("../../examples/proxy.toml")).unwrap();
        let text = toml::to_string(&c).unwrap();
        let again = Config::parse("again.toml", &text).unwrap();
        again.validate("again.toml").unwrap();
        assert_eq!(toml::to_string(&again).unwrap(), text);
    }

    #[test]
    fn load_reads_the_file_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let c = Config::load(&path).unwrap();
        assert!(c.outbound.is_some());
        let e = Config::load(&dir.path().join("missing.toml")).unwrap_err();
        assert!(e.to_string().contains("missing.toml"), "{e}");
    }
}
