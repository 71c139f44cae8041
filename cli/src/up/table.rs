//! The table `tally up` prints once every instance is ready: what runs,
//! where it listens, where its metrics are and where its log is.

use std::io::Write;

use super::plan::Instance;
use super::{scrape, supervisor};

/// What the table shows as an instance's address: a service's own gRPC
/// port (what operators, grpcurl and the CLI use), or a sidecar's ports.
pub(super) fn address_column(inst: &Instance) -> String {
    if inst.sidecar_of.is_some() {
        let port = |name: &str| {
            inst.ports
                .get(name)
                .map(|p| format!("{name} :{p}"))
                .unwrap_or_default()
        };
        ["inbound", "outbound", "admin"]
            .map(port)
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("  ")
    } else if let Some(a) = inst.addr {
        a.to_string()
    } else if inst.ports.is_empty() {
        "-".into()
    } else {
        // The gateway: its browser entry point first.
        let mut names: Vec<&&str> = inst.ports.keys().collect();
        names.sort_by_key(|n| **n != "gateway");
        names
            .iter()
            .map(|n| format!("{n} :{}", inst.ports[**n]))
            .collect::<Vec<_>>()
            .join("  ")
    }
}

/// Prints one row per instance: name, address, metrics URL, pid and log file.
pub(super) fn print(handles: &[supervisor::Handle]) {
    // Each service instance, then its sidecar, in service port order.
    let port_of = |name: &str| {
        handles
            .iter()
            .find(|h| h.instance.name == name)
            .and_then(|h| h.instance.ports.values().min().copied())
    };
    let mut rows: Vec<&supervisor::Handle> = handles.iter().collect();
    rows.sort_by_key(|h| {
        let front = h.instance.sidecar_of.as_deref().unwrap_or(&h.instance.name);
        (port_of(front), h.instance.sidecar_of.is_some())
    });
    let width = rows
        .iter()
        .map(|h| address_column(&h.instance).len())
        .max()
        .unwrap_or(0)
        .max(22);
    let metrics = |h: &supervisor::Handle| scrape::url(&h.instance).unwrap_or_else(|| "-".into());
    let metrics_width = rows.iter().map(|h| metrics(h).len()).max().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "  {:<20} {:<width$} {:<metrics_width$} {:<8} LOG",
        "INSTANCE", "ADDRESS", "METRICS", "PID"
    );
    for h in rows {
        let _ = writeln!(
            out,
            "  {:<20} {:<width$} {:<metrics_width$} {:<8} {}",
            h.instance.name,
            address_column(&h.instance),
            metrics(h),
            h.state.pid(),
            h.instance.log_path.display()
        );
    }
    let _ = out.flush();
}
