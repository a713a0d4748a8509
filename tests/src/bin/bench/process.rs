//! What the bench reads about its processes from /proc: peak RSS, bytes written to disk, CPU
//! time.

use harness::{Daemon, Stack};

/// Peak resident set size of `daemon` so far (`VmHWM`), in KiB.
pub fn peak_rss_kb(daemon: &Daemon) -> Option<u64> {
    proc_status_kb(daemon.pid(), "VmHWM:")
}

/// Bytes `daemon` caused to be sent to the storage layer (`write_bytes`).
pub fn write_bytes(daemon: &Daemon) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{}/io", daemon.pid())).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// CPU seconds (user + system) a process has used so far; `self` for the bench itself.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(ticks as f64 / 100.0)
}

/// CPU seconds of each process of a stack, to see where a scenario's time goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSnapshot {
    pub ingester: f64,
    pub uploader: f64,
    pub broker: f64,
    /// The bench process: relay, in-process S3 server, status polls.
    pub bench: f64,
}

impl CpuSnapshot {
    pub fn take(stack: &Stack) -> CpuSnapshot {
        let of = |p: &Option<Daemon>| {
            p.as_ref()
                .and_then(|p| cpu_seconds(&p.pid().to_string()))
                .unwrap_or(0.0)
        };
        CpuSnapshot {
            ingester: of(&stack.ingester),
            uploader: of(&stack.uploader),
            broker: stack
                .pulsar
                .pid()
                .and_then(|pid| cpu_seconds(&pid.to_string()))
                .unwrap_or(0.0),
            bench: cpu_seconds("self").unwrap_or(0.0),
        }
    }

    pub fn since(self, before: CpuSnapshot) -> String {
        format!(
            "CPU s: ingester {:.1}, uploader {:.1}, broker {:.1}, bench (relay + S3 server) {:.1}",
            self.ingester - before.ingester,
            self.uploader - before.uploader,
            self.broker - before.broker,
            self.bench - before.bench,
        )
    }
}

fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
