//! The floor relay pair: `tally-floor-relay --side outbound` → mTLS → `--side inbound` → echo,
//! with the same certificates as the Tally and Envoy pairs.

use super::{Programs, Running, path_str};
use crate::error::BenchError;
use crate::pki::{Identity, Pki};
use std::net::SocketAddr;
use std::process::Stdio;

#[derive(serde::Deserialize)]
struct Listen {
    listen: SocketAddr,
}

impl Running {
    pub(super) async fn start_floor(
        &mut self,
        upstream: SocketAddr,
        pki: &Pki,
        programs: &Programs,
    ) -> Result<(), BenchError> {
        let inbound = self
            .start_floor_one(
                "floor-inbound",
                "inbound",
                upstream,
                &pki.server,
                &pki.client,
                programs,
            )
            .await?;
        self.peer_entry = Some(inbound);
        self.entry = self
            .start_floor_one(
                "floor-outbound",
                "outbound",
                inbound,
                &pki.client,
                &pki.server,
                programs,
            )
            .await?;
        Ok(())
    }

    /// Starts one side; `own` is its certificate, `peer` the identity the other side must have.
    async fn start_floor_one(
        &mut self,
        name: &str,
        side: &str,
        upstream: SocketAddr,
        own: &Identity,
        peer: &Identity,
        programs: &Programs,
    ) -> Result<SocketAddr, BenchError> {
        let mut cmd = Self::command(programs, &programs.floor_relay);
        cmd.args(["--side", side])
            .arg("--upstream")
            .arg(upstream.to_string())
            .arg("--expect")
            .arg(peer.id.to_string())
            .arg("--bundle")
            .arg(path_str(&own.bundle))
            .arg("--cert")
            .arg(path_str(&own.cert))
            .arg("--key")
            .arg(path_str(&own.key))
            .stdout(Stdio::piped());
        self.spawn(name, cmd)?;
        let line = self.start_line(name).await?;
        serde_json::from_str::<Listen>(line.trim())
            .map(|l| l.listen)
            .map_err(|e| BenchError::NotReady {
                name: name.into(),
                detail: format!("unreadable start line {line:?}: {e}"),
            })
    }
}
