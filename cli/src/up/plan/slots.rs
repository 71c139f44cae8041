//! Port allocation: every service instance, its sidecar and each mesh-only
//! process gets consecutive loopback ports from `--base-port`, in an order
//! that keeps service ports put when the mesh is on; and where each
//! service can then be reached.

use super::super::UpError;
use super::super::platform::{HOST, Platform, ServiceSpec};
use super::replicas::instance_name;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Name of the port a service instance serves `/metrics` on.
pub const METRICS_PORT: &str = "metrics";

/// A service instance with its allocated ports, before configs are written.
pub(super) struct Slot<'p> {
    pub name: String,
    pub spec: &'p ServiceSpec,
    pub ports: BTreeMap<&'static str, u16>,
    /// The sidecar's name and ports, when it has one.
    pub sidecar: Option<(String, BTreeMap<&'static str, u16>)>,
}

struct Ports {
    next: u32,
    base: u16,
}

impl Ports {
    fn take(&mut self, names: &[&'static str]) -> Result<BTreeMap<&'static str, u16>, UpError> {
        let mut out = BTreeMap::new();
        for p in names {
            let port = u16::try_from(self.next).map_err(|_| {
                UpError::Usage(format!(
                    "--base-port {} leaves too few ports below 65536 for every instance; pick a lower one",
                    self.base
                ))
            })?;
            out.insert(*p, port);
            self.next += 1;
        }
        Ok(out)
    }
}

pub(super) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(HOST, port)
}

/// Every instance's slot with its ports, in allocation order.
pub(super) fn allocate<'p>(
    platform: &'p Platform,
    counts: &BTreeMap<&'static str, u32>,
    base_port: u16,
) -> Result<Vec<Slot<'p>>, UpError> {
    // Service ports first, consecutively in platform order: with defaults
    // user gets the base port (50051) and polling the next (50052). Sidecar
    // ports come after all of them, so service addresses do not move when
    // the mesh is on.
    let mut ports = Ports {
        next: u32::from(base_port),
        base: base_port,
    };
    let mut slots: Vec<Slot<'_>> = Vec::new();
    for spec in platform.services.iter().filter(|s| !s.mesh_only) {
        let n = counts.get(spec.name).copied().unwrap_or(1);
        for i in 1..=n {
            slots.push(Slot {
                name: instance_name(spec.name, i, n),
                spec,
                ports: ports.take(spec.ports)?,
                sidecar: None,
            });
        }
    }
    if let Some(sc) = &platform.sidecar {
        for slot in slots.iter_mut().filter(|s| s.spec.sidecar) {
            slot.sidecar = Some((format!("{}-proxy", slot.name), ports.take(sc.ports)?));
        }
    }
    // Mesh-only processes (the gateway) last, so nothing else moves; one
    // instance each (`--replicas` scales services).
    for spec in platform.services.iter().filter(|s| s.mesh_only) {
        slots.push(Slot {
            name: spec.name.to_string(),
            spec,
            ports: ports.take(spec.ports)?,
            sidecar: None,
        });
    }
    // Each service instance's `/metrics` listener comes last of all, so no
    // other port moves because of it.
    for slot in slots.iter_mut().filter(|s| !s.spec.mesh_only) {
        slot.ports.extend(ports.take(&[METRICS_PORT])?);
    }
    Ok(slots)
}

/// Where each service can be reached: its sidecars' inbound ports when it
/// has them, else its own gRPC ports.
pub(super) fn endpoints(slots: &[Slot<'_>]) -> BTreeMap<String, Vec<SocketAddr>> {
    let mut endpoints: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
    for slot in slots {
        let port = match &slot.sidecar {
            Some((_, sp)) => sp.get("inbound"),
            None => slot.ports.get("grpc"),
        };
        if let Some(p) = port {
            endpoints
                .entry(slot.spec.name.to_string())
                .or_default()
                .push(loopback(*p));
        }
    }
    endpoints
}

/// Without a mesh a caller's outbound address is the target's first
/// instance (no load balancing); with one it is the local sidecar.
pub(super) fn direct_addresses<'p>(slots: &[Slot<'p>]) -> BTreeMap<&'p str, String> {
    slots
        .iter()
        .filter_map(|s| s.ports.get("grpc").map(|p| (s.spec.name, *p)))
        .fold(BTreeMap::new(), |mut m, (name, port)| {
            m.entry(name)
                .or_insert_with(|| format!("http://{}", loopback(port)));
            m
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::up::platform::platform;

    #[test]
    fn ports_past_65535_are_refused() {
        let p = platform().without_mesh();
        let counts = BTreeMap::new();
        let err = allocate(&p, &counts, 65535).err().expect("overflow");
        assert!(err.to_string().contains("--base-port"), "{err}");
    }

    #[test]
    fn sidecars_and_the_gateway_come_after_every_service() {
        let p = platform();
        let counts = BTreeMap::from([("user", 2)]);
        let slots = allocate(&p, &counts, 50051).expect("slots");
        let names: Vec<&str> = slots.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names[..2], ["user-1", "user-2"]);
        assert_eq!(names.last(), Some(&"gateway"));
        let last_service = slots.iter().filter_map(|s| s.ports.get("grpc")).max();
        let first_sidecar = slots
            .iter()
            .filter_map(|s| s.sidecar.as_ref())
            .flat_map(|(_, p)| p.values())
            .min();
        assert!(last_service < first_sidecar);
        let gateway_ports = slots.last().map(|s| s.ports.values().max());
        let first_metrics = slots
            .iter()
            .filter_map(|s| s.ports.get(METRICS_PORT))
            .min()
            .copied();
        assert!(
            gateway_ports.flatten().copied() < first_metrics,
            "metrics ports come after everything else"
        );
        assert_eq!(
            slots
                .iter()
                .filter(|s| s.ports.contains_key(METRICS_PORT))
                .count(),
            slots.len() - 1,
            "every service instance but not the gateway"
        );
        let eps = endpoints(&slots);
        assert_eq!(eps["user"].len(), 2, "both user sidecars");
        assert_eq!(
            direct_addresses(&slots)["user"],
            "http://127.0.0.1:50051",
            "the first user instance"
        );
    }
}
