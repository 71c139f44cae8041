//! What a proxy process costs, read from Linux's /proc: resident memory (peak
//! `VmHWM` and current `VmRSS`) and CPU time (`utime + stime`). These are the
//! kernel's own numbers for the process, the same for Tally and Envoy.

use std::time::Duration;

/// Memory of one process, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub hwm_kib: u64,
    pub rss_kib: u64,
}

impl std::ops::Add for Memory {
    type Output = Memory;
    fn add(self, o: Memory) -> Memory {
        Memory {
            hwm_kib: self.hwm_kib + o.hwm_kib,
            rss_kib: self.rss_kib + o.rss_kib,
        }
    }
}

/// `VmHWM` and `VmRSS` of `pid`; `None` if the process is gone or the file unreadable.
pub fn memory(pid: u32) -> Option<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status(&text)
}

fn parse_status(text: &str) -> Option<Memory> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    };
    Some(Memory {
        hwm_kib: field("VmHWM:")?,
        rss_kib: field("VmRSS:")?,
    })
}

/// User plus system CPU time `pid` has used so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_stat_ticks(&text)?;
    Some(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second(),
    ))
}

/// utime (field 14) + stime (field 15). The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its closing parenthesis.
fn parse_stat_ticks(text: &str) -> Option<u64> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state), so field N is at index N - 3.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    #[allow(unsafe_code)]
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Sum of the CPU time of several processes (missing ones count as zero).
pub fn cpu_total(pids: &[u32]) -> Duration {
    pids.iter().filter_map(|p| cpu_time(*p)).sum()
}

/// Sum of the memory of several processes (missing ones count as zero).
pub fn memory_total(pids: &[u32]) -> Memory {
    pids.iter()
        .filter_map(|p| memory(*p))
        .fold(Memory::default(), |a, b| a + b)
}

/// The machine's 1-minute load average (runnable threads, all processes), to show how
/// busy the machine was around a measurement.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Busy CPU time of the whole machine so far, summed over all CPUs (`user nice system irq
/// softirq steal` of the `cpu` line of /proc/stat; idle and iowait are not busy).
pub fn machine_busy() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks = parse_machine_busy(&text)?;
    Some(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second(),
    ))
}

fn parse_machine_busy(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    Some(at(0) + at(1) + at(2) + at(5) + at(6) + at(7))
}

#[cfg(test)]
mod tests {
    #[test]
    fn machine_busy_skips_idle_and_iowait() {
        let text = "cpu  10 1 5 1000 50 2 3 4 0 0\ncpu0 5 0 2 500 25 1 1 2 0 0\n";
        assert_eq!(parse_machine_busy(text), Some(10 + 1 + 5 + 2 + 3 + 4));
    }

    use super::*;

    #[test]
    fn reads_status_fields() {
        let text = "Name:\tx\nVmPeak:\t  100 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(
            parse_status(text),
            Some(Memory {
                hwm_kib: 2048,
                rss_kib: 1024
            })
        );
    }

    #[test]
    fn reads_stat_ticks_after_a_name_with_spaces() {
        let text = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 111 222 0 0 20 0 1 0";
        assert_eq!(parse_stat_ticks(text), Some(333));
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        assert!(memory(me).is_some_and(|m| m.rss_kib > 0));
        assert!(cpu_time(me).is_some());
    }
}
