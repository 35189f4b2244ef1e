//! What Linux says about a replica process: its peak resident memory
//! (`VmHWM` in `/proc/<pid>/status`) and the CPU time of all its threads
//! (`utime` + `stime` in `/proc/<pid>/stat`, in clock ticks), and about the
//! machine (cores, CPU model, kernel, memory) for the report.

use serde::Serialize;
use std::time::Duration;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sample {
    pub peak_rss_kib: u64,
    pub cpu: Duration,
}

/// Reads `/proc/<pid>`; `None` once the process is gone.
pub(crate) fn sample(pid: u32, ticks_per_second: u64) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(Sample {
        peak_rss_kib: vm_hwm_kib(&status)?,
        cpu: cpu_time(&stat, ticks_per_second)?,
    })
}

/// `VmHWM:     28332 kB` → 28332.
pub(crate) fn vm_hwm_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `utime` + `stime` (fields 14 and 15 of `/proc/<pid>/stat`), counted after
/// the command name, which is in parentheses and may hold spaces and
/// parentheses itself.
pub(crate) fn cpu_time(stat: &str, ticks_per_second: u64) -> Option<Duration> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is the first.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    let ticks = utime + stime;
    let per_second = ticks_per_second.max(1);
    Some(Duration::from_micros(ticks * 1_000_000 / per_second))
}

/// Clock ticks per second (`getconf CLK_TCK`); Linux reports 100 on every
/// common platform, which is the fallback.
pub(crate) fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|ticks| *ticks > 0)
        .unwrap_or(100)
}

/// The machine the run was on.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    pub cores: usize,
    pub cpu_model: Option<String>,
    pub kernel: Option<String>,
    pub memory_mib: Option<u64>,
}

impl Machine {
    pub(crate) fn this() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: read("/proc/cpuinfo").and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            }),
            kernel: read("/proc/sys/kernel/osrelease").map(|k| k.trim().to_owned()),
            memory_mib: read("/proc/meminfo").and_then(|info| {
                let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
                let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib / 1024)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_peak_rss_and_cpu_time() {
        let status =
            "Name:\tticket-worker\nVmPeak:\t  900 kB\nVmHWM:\t   28332 kB\nVmRSS:\t 27000 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(28_332));
        assert_eq!(vm_hwm_kib("Name: x\n"), None);
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime …
        let stat = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(cpu_time(stat, 100), Some(Duration::from_secs(3)));
        assert_eq!(cpu_time("garbage", 100), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let me = sample(std::process::id(), ticks_per_second()).expect("/proc/self");
        assert!(me.peak_rss_kib > 0);
        assert!(Machine::this().cores >= 1);
    }
}
