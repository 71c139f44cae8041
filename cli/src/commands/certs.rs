//! `tally certs ...`: create the mesh root CA, issue workload certificates, rotate the
//! root and inspect PEM files. The work is done by the `tally-certs` crate; this module
//! only parses arguments and prints results.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Args, Subcommand};
use tally_certs::inspect::rfc3339;
use tally_certs::spiffe::{DEFAULT_NAMESPACE, DEFAULT_TRUST_DOMAIN};
use tally_certs::{CertAuthority, SpiffeId, format_duration, inspect_pem, write_workload};

/// Mesh certificates: root CA, workload certificates, inspection.
#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCommand,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a mesh root CA: ca.pem, ca-key.pem (0600) and bundle.pem in --dir.
    Init {
        /// Directory for the CA files (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// SPIFFE trust domain of the mesh.
        #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Replace an existing CA in --dir (certificates it issued stop being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Issue a workload certificate: <service>.pem and <service>-key.pem.
    Issue {
        /// Directory holding the CA (ca.pem, ca-key.pem).
        #[arg(long)]
        dir: PathBuf,
        /// Service name (a DNS label, e.g. polling).
        #[arg(long)]
        service: String,
        /// Namespace (a DNS label).
        #[arg(long, default_value = DEFAULT_NAMESPACE)]
        namespace: String,
        /// Lifetime, e.g. 24h, 15m, 90s (at least 60s, at most 90d).
        #[arg(long, default_value = "24h", value_parser = parse_validity)]
        validity: Duration,
        /// Where to write the files (default: --dir). bundle.pem is copied there if missing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Rotate the root CA: a new root signs from now on; bundle.pem trusts old and new.
    RotateCa {
        /// Directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print the SPIFFE id and validity of every certificate in a PEM file.
    Inspect {
        /// A certificate, chain or bundle in PEM.
        file: PathBuf,
    },
}

fn parse_validity(s: &str) -> Result<Duration, String> {
    tally_certs::parse_duration(s).map_err(|e| e.to_string())
}

/// Runs a `tally certs` command.
pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    match args.command {
        CertsCommand::Init {
            dir,
            trust_domain,
            force,
        } => {
            let ca = CertAuthority::init(&dir, &trust_domain, force)?;
            println!(
                "created mesh root CA for trust domain {} in {}",
                ca.trust_domain(),
                dir.display()
            );
            println!("  ca.pem, ca-key.pem (keep private), bundle.pem (distribute to workloads)");
        }
        CertsCommand::Issue {
            dir,
            service,
            namespace,
            validity,
            out,
        } => {
            let ca = CertAuthority::load(&dir)?;
            let id = SpiffeId::new(ca.trust_domain(), namespace, service)?;
            let issued = ca.issue(&id, validity)?;
            let out = out.unwrap_or_else(|| dir.clone());
            let paths = write_workload(&out, &id, &issued)?;
            if !paths.bundle.exists() {
                let src = dir.join(tally_certs::ca::BUNDLE_FILE);
                std::fs::copy(&src, &paths.bundle).with_context(|| {
                    format!("copying {} to {}", src.display(), paths.bundle.display())
                })?;
            }
            println!("issued {id}");
            println!("  cert:      {}", paths.cert.display());
            println!("  key:       {}", paths.key.display());
            println!("  bundle:    {}", paths.bundle.display());
            println!(
                "  not after: {} ({})",
                rfc3339(issued.not_after),
                format_duration(validity)
            );
        }
        CertsCommand::RotateCa { dir } => {
            let ca = tally_certs::rotate_root(&dir)?;
            println!(
                "new root CA for {} in {}; bundle.pem now trusts the old and new roots",
                ca.trust_domain(),
                dir.display()
            );
            println!("  re-issue workload certificates, then remove the old root from bundle.pem");
        }
        CertsCommand::Inspect { file } => {
            let pem =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let certs = inspect_pem(&pem).with_context(|| file.display().to_string())?;
            let now = SystemTime::now();
            for (i, c) in certs.iter().enumerate() {
                println!(
                    "{}: certificate {} of {}",
                    file.display(),
                    i + 1,
                    certs.len()
                );
                match &c.spiffe_id {
                    Some(id) => println!("  spiffe id:  {id}"),
                    None => println!("  spiffe id:  (none)"),
                }
                println!("  subject:    {}", c.subject);
                if !c.dns_names.is_empty() {
                    println!("  dns names:  {}", c.dns_names.join(", "));
                }
                println!("  not before: {}", rfc3339(c.not_before));
                println!(
                    "  not after:  {} ({})",
                    rfc3339(c.not_after),
                    expiry(now, c.not_after)
                );
                println!("  ca:         {}", if c.is_ca { "yes" } else { "no" });
            }
        }
    }
    Ok(())
}

/// "expires in 3h 5m" or "EXPIRED 10m ago".
fn expiry(now: SystemTime, not_after: SystemTime) -> String {
    match not_after.duration_since(now) {
        Ok(left) => format!("expires in {}", rough(left)),
        Err(e) => format!("EXPIRED {} ago", rough(e.duration())),
    }
}

/// The two largest units of a duration: `2d 3h`, `5m 10s`, `42s`.
fn rough(d: Duration) -> String {
    let s = d.as_secs();
    let (d_, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    match (d_, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d_}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(flatten)]
        args: CertsArgs,
    }

    #[test]
    fn validity_flag_accepts_human_durations() {
        let cli = TestCli::try_parse_from([
            "certs",
            "issue",
            "--dir",
            "d",
            "--service",
            "user",
            "--validity",
            "15m",
        ])
        .unwrap();
        match cli.args.command {
            CertsCommand::Issue {
                validity,
                namespace,
                ..
            } => {
                assert_eq!(validity, Duration::from_secs(900));
                assert_eq!(namespace, "default");
            }
            other => panic!("parsed {other:?}"),
        }
        let err = TestCli::try_parse_from([
            "certs",
            "issue",
            "--dir",
            "d",
            "--service",
            "user",
            "--validity",
            "15",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("missing unit"), "{err}");
    }

    #[test]
    fn init_issue_inspect_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let parse = |args: &[&str]| TestCli::try_parse_from(args).unwrap().args;
        let d = ca_dir.to_str().unwrap();
        run(parse(&["certs", "init", "--dir", d])).unwrap();
        assert!(run(parse(&["certs", "init", "--dir", d])).is_err());
        let out = dir.path().join("polling");
        let o = out.to_str().unwrap();
        run(parse(&[
            "certs",
            "issue",
            "--dir",
            d,
            "--service",
            "polling",
            "--out",
            o,
        ]))
        .unwrap();
        let cert = out.join("polling.pem");
        assert!(out.join("bundle.pem").is_file());
        let summary = &inspect_pem(&std::fs::read(&cert).unwrap()).unwrap()[0];
        assert_eq!(
            summary
                .spiffe_id
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("spiffe://tally.local/ns/default/sa/polling")
        );
        run(parse(&["certs", "inspect", cert.to_str().unwrap()])).unwrap();
        assert!(
            run(parse(&[
                "certs",
                "issue",
                "--dir",
                d,
                "--service",
                "Bad_Name"
            ]))
            .is_err()
        );
    }

    #[test]
    fn rough_durations_use_two_units() {
        assert_eq!(rough(Duration::from_secs(42)), "42s");
        assert_eq!(rough(Duration::from_secs(310)), "5m 10s");
        assert_eq!(rough(Duration::from_secs(3 * 3600 + 300)), "3h 5m");
        assert_eq!(rough(Duration::from_secs(2 * 86_400 + 3 * 3600)), "2d 3h");
    }
}
