//! CPU time and memory of a server process, from `/proc/PID` (Linux).

use std::fs;
use std::io;
use std::process::Command;
use std::sync::OnceLock;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// `utime + stime` of the whole process (live and exited threads), in nanoseconds;
    /// its resolution is one clock tick (10 ms at the usual 100 Hz).
    pub ticks_ns: u64,
    /// Sum of the run time of the live threads (`/proc/PID/task/*/schedstat`), in
    /// nanoseconds: precise, but blind to threads that have exited.
    pub sched_ns: Option<u64>,
    /// Resident set size now, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size since the process started, KiB (`VmHWM`).
    pub peak_rss_kib: u64,
    /// Processes added up in this sample (1 for one process).
    pub processes: u64,
}

impl ProcSample {
    /// Reads the counters of process `pid`.
    pub fn read(pid: u32) -> io::Result<ProcSample> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
        let ticks = cpu_ticks(&stat)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable stat"))?;
        Ok(ProcSample {
            ticks_ns: ticks.saturating_mul(1_000_000_000) / clock_ticks_per_second(),
            sched_ns: sched_ns(pid),
            rss_kib: status_kib(&status, "VmRSS:").unwrap_or(0),
            peak_rss_kib: status_kib(&status, "VmHWM:").unwrap_or(0),
            processes: 1,
        })
    }

    /// The counters of every process in `pids` added up (`None` for no pid): CPU time and
    /// RSS summed; the peak is the sum of the peaks, an upper bound of the group's peak.
    pub fn read_sum(pids: &[u32]) -> io::Result<Option<ProcSample>> {
        let mut sum: Option<ProcSample> = None;
        for &pid in pids {
            let one = ProcSample::read(pid)?;
            sum = Some(match sum {
                None => one,
                Some(total) => ProcSample {
                    ticks_ns: total.ticks_ns + one.ticks_ns,
                    sched_ns: total.sched_ns.zip(one.sched_ns).map(|(a, b)| a + b),
                    rss_kib: total.rss_kib + one.rss_kib,
                    peak_rss_kib: total.peak_rss_kib + one.peak_rss_kib,
                    processes: total.processes + one.processes,
                },
            });
        }
        Ok(sum)
    }

    /// CPU seconds the process used between `self` and the later sample `later`: the
    /// precise per-thread sum when it is consistent with the tick count (no thread
    /// exited in between), else the tick count.
    pub fn cpu_seconds_until(&self, later: &ProcSample) -> f64 {
        let ticks = later.ticks_ns.saturating_sub(self.ticks_ns);
        let tick = 1_000_000_000 / clock_ticks_per_second();
        let precise = match (self.sched_ns, later.sched_ns) {
            (Some(a), Some(b)) if b >= a && (b - a) + (1 + self.processes) * tick >= ticks => {
                Some(b - a)
            }
            _ => None,
        };
        precise.unwrap_or(ticks) as f64 / 1e9
    }
}

/// `utime + stime` from `/proc/PID/stat` (fields 14 and 15, after the command name).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn sched_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for entry in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = entry.ok()?.path().join("schedstat");
        let text = fs::read_to_string(path).ok()?;
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// `getconf CLK_TCK`, 100 when it cannot be asked.
fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
            .filter(|&ticks| ticks > 0)
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let sample = ProcSample::read(std::process::id()).unwrap();
        assert!(sample.rss_kib > 0);
        assert!(sample.peak_rss_kib >= sample.rss_kib);
        let mut spin = 0u64;
        for i in 0..5_000_000u64 {
            spin = spin.wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(spin);
        let later = ProcSample::read(std::process::id()).unwrap();
        assert!(sample.cpu_seconds_until(&later) >= 0.0);
    }

    #[test]
    fn command_names_with_spaces_and_parens() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 1 0 1 0 0";
        assert_eq!(cpu_ticks(stat), Some(300));
    }
}
