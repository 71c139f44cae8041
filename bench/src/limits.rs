//! The open-file limit of the benchmark process: the idle-connection steps hold up to
//! 10 000 connections, each a socket in this process and one in the proxy, which
//! inherits this process's limit through `taskset`. The soft limit is raised to the
//! hard limit (what an unprivileged process may do), never lowered.

/// File descriptors the benchmark keeps for itself besides the idle connections
/// (load-generator connections, pipes, /proc reads, the runtime).
pub const SPARE_FDS: u64 = 512;

/// Raises `RLIMIT_NOFILE`'s soft limit to `want` or the hard limit, whichever is lower;
/// returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> Result<u64, String> {
    // SAFETY: a zeroed rlimit is a valid out-parameter; getrlimit/setrlimit only read and
    // write it and this process's limit.
    #[allow(unsafe_code)]
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        let target = want.min(lim.rlim_max as u64);
        if (lim.rlim_cur as u64) < target {
            lim.rlim_cur = target as libc::rlim_t;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error().to_string());
            }
        }
        Ok(lim.rlim_cur as u64)
    }
}

/// Raises the limit for `idle` connections (each is a descriptor here and one in the
/// proxy, which inherits this limit) plus [`SPARE_FDS`]; says on stderr when the hard
/// limit is lower (the idle steps are then capped and the rest reported as failed).
pub fn raise_for_idle(idle: u64) -> Result<u64, String> {
    let want = idle + SPARE_FDS;
    let nofile =
        raise_nofile(want).map_err(|e| format!("cannot raise the open-file limit: {e}"))?;
    if nofile < want {
        eprintln!(
            "tally-bench: the open-file limit is {nofile} (hard limit), below the {want} the \
             largest idle step needs; idle steps are capped and their missing connections \
             reported as failed"
        );
    }
    Ok(nofile)
}

/// How many idle connections fit under a soft limit of `soft` descriptors.
pub fn idle_connections_within(soft: u64) -> u64 {
    soft.saturating_sub(SPARE_FDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_never_lowers_and_is_idempotent() {
        let a = raise_nofile(1).unwrap();
        let b = raise_nofile(1).unwrap();
        assert_eq!(a, b);
        assert!(a >= 1);
        assert_eq!(idle_connections_within(100), 0);
        assert_eq!(idle_connections_within(20_512), 20_000);
    }
}
