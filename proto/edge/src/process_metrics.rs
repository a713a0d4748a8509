//! What every daemon's `/metrics` says about the process itself: `tdmq_backup_build_info` and
//! the standard Prometheus process metrics (`process_resident_memory_bytes`,
//! `process_cpu_seconds_total`, `process_open_fds`, …, the names every Prometheus client library
//! uses, so existing dashboards and alerts work unchanged).
//!
//! The process metrics are read from `/proc/self` at scrape time by [`ProcessCollector`]. The
//! crates that do this for Rust (`kubert-prometheus-process`, `metrics-process`) are written for
//! prometheus-client 0.23 or for the `metrics` crate, whose collectors cannot be registered in
//! a prometheus-client 0.26 registry, and the parsing is a few lines of text handling. Off Linux
//! nothing is read and the process metrics are left out; on Linux a file that cannot be read or
//! parsed leaves out only the metrics that come from it, and says why in the log (once at WARN,
//! afterwards at DEBUG, so that a scrape every 15 s does not flood it).

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Registers `tdmq_backup_build_info{version,daemon}` and the process metrics on `registry`
/// (a registry without a prefix: these names are fixed).
pub fn register(registry: &mut Registry, daemon: &'static str) {
    registry.register(
        "tdmq_backup_build",
        "The daemon's version; always 1",
        Info::new(vec![
            ("version".to_string(), proto::VERSION.to_string()),
            ("daemon".to_string(), daemon.to_string()),
        ]),
    );
    registry.register_collector(Box::new(ProcessCollector));
}

/// Why a process metric is missing from a scrape.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("reading {path}: {source}")]
    Read {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: no {what} in it")]
    Parse {
        path: &'static str,
        what: &'static str,
    },
}

/// One reading of the process's state; a `None` is left out of the scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub start_time_seconds: Option<f64>,
    pub virtual_memory_bytes: Option<u64>,
    pub resident_memory_bytes: Option<u64>,
    pub threads: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

/// Encodes [`ProcessStats::read`] on each scrape. Help texts end with a period as the registry's
/// own do (it adds one to registered metrics, not to a collector's).
#[derive(Debug)]
pub struct ProcessCollector;

static WARNED: AtomicBool = AtomicBool::new(false);

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (stats, errors) = ProcessStats::read();
        for err in errors {
            if WARNED.swap(true, Ordering::Relaxed) {
                tracing::debug!(error = %err, "metrics: a process metric is unavailable");
            } else {
                tracing::warn!(error = %err, "metrics: a process metric is unavailable; left out of /metrics (said once)");
            }
        }
        if let Some(v) = stats.cpu_seconds {
            let m = ConstCounter::new(v);
            m.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                m.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                stats.resident_memory_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                stats.virtual_memory_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                stats.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors (the soft limit).",
                stats.max_fds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process.",
                stats.threads,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let m = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
                m.encode(encoder.encode_descriptor(name, help, None, m.metric_type())?)?;
            }
        }
        if let Some(v) = stats.start_time_seconds {
            let m = ConstGauge::new(v);
            m.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                None,
                m.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// Clock ticks per second of the times in `/proc`: the kernel reports them in USER_HZ, which is
/// 100 on every architecture Linux runs on today (the Go client's procfs library assumes the same;
/// reading it from `sysconf` would take `unsafe` code, which this workspace forbids).
const USER_HZ: f64 = 100.0;

impl ProcessStats {
    /// Reads `/proc/self`; the errors say what could not be read. Off Linux: nothing, no error.
    pub fn read() -> (ProcessStats, Vec<ProcError>) {
        let mut stats = ProcessStats::default();
        let mut errors = Vec::new();
        if !cfg!(target_os = "linux") {
            return (stats, errors);
        }
        let mut keep = |r: Result<(), ProcError>| {
            if let Err(e) = r {
                errors.push(e);
            }
        };
        keep(read_file("/proc/self/stat").and_then(|text| {
            let stat = parse_stat(&text)?;
            stats.cpu_seconds = Some(stat.cpu_ticks as f64 / USER_HZ);
            stats.threads = Some(stat.threads);
            stats.virtual_memory_bytes = Some(stat.vsize_bytes);
            let boot = read_file("/proc/stat").and_then(|t| parse_boot_time(&t))?;
            stats.start_time_seconds = Some(boot as f64 + stat.start_ticks as f64 / USER_HZ);
            Ok(())
        }));
        keep(read_file("/proc/self/status").and_then(|text| {
            stats.resident_memory_bytes = Some(parse_rss_bytes(&text)?);
            Ok(())
        }));
        keep(count_fds().map(|n| stats.open_fds = Some(n)));
        keep(read_file("/proc/self/limits").and_then(|text| {
            stats.max_fds = Some(parse_max_open_files(&text)?);
            Ok(())
        }));
        (stats, errors)
    }
}

fn read_file(path: &'static str) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|source| ProcError::Read { path, source })
}

fn count_fds() -> Result<u64, ProcError> {
    const PATH: &str = "/proc/self/fd";
    let dir = std::fs::read_dir(PATH).map_err(|source| ProcError::Read { path: PATH, source })?;
    // The directory handle read_dir holds is one of the entries: not the daemon's own.
    Ok((dir.count() as u64).saturating_sub(1))
}

#[derive(Debug, PartialEq, Eq)]
struct Stat {
    cpu_ticks: u64,
    threads: u64,
    start_ticks: u64,
    vsize_bytes: u64,
}

/// `/proc/self/stat`: fields after the command name, which is in parentheses and may hold
/// spaces and parentheses itself (so the split is at the last `)`).
fn parse_stat(text: &str) -> Result<Stat, ProcError> {
    const PATH: &str = "/proc/self/stat";
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or(ProcError::Parse {
            path: PATH,
            what: "command name",
        })?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // proc(5) numbers the fields from 1 and the state is field 3, the first after the name.
    let field = |n: usize, what: &'static str| {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or(ProcError::Parse { path: PATH, what })
    };
    Ok(Stat {
        cpu_ticks: field(14, "utime")?.saturating_add(field(15, "stime")?),
        threads: field(20, "num_threads")?,
        start_ticks: field(22, "starttime")?,
        vsize_bytes: field(23, "vsize")?,
    })
}

/// `btime` of `/proc/stat`: when the machine booted, in unix seconds.
fn parse_boot_time(text: &str) -> Result<u64, ProcError> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
        .ok_or(ProcError::Parse {
            path: "/proc/stat",
            what: "btime",
        })
}

/// `VmRSS` of `/proc/self/status`, which is in kB (KiB).
fn parse_rss_bytes(text: &str) -> Result<u64, ProcError> {
    text.lines()
        .find_map(|l| {
            let kb = l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?;
            kb.trim().parse::<u64>().ok()
        })
        .map(|kb| kb.saturating_mul(1024))
        .ok_or(ProcError::Parse {
            path: "/proc/self/status",
            what: "VmRSS",
        })
}

/// The soft limit of "Max open files" in `/proc/self/limits`; "unlimited" counts as `u64::MAX`.
fn parse_max_open_files(text: &str) -> Result<u64, ProcError> {
    text.lines()
        .find_map(|l| {
            let soft = l
                .strip_prefix("Max open files")?
                .split_whitespace()
                .next()?;
            if soft == "unlimited" {
                Some(u64::MAX)
            } else {
                soft.parse().ok()
            }
        })
        .ok_or(ProcError::Parse {
            path: "/proc/self/limits",
            what: "Max open files",
        })
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn parses_the_proc_files() {
        // A command name with a space and a parenthesis must not shift the fields.
        let stat = "17219 (tok (io) x) R 17217 17217 10053 0 -1 4194304 97 0 0 0 250 130 0 0 20 0 \
                    9 0 1139946 3133440 359 18446744073709551615 94169161015296";
        assert_eq!(
            parse_stat(stat).ok(),
            Some(Stat {
                cpu_ticks: 380,
                threads: 9,
                start_ticks: 1_139_946,
                vsize_bytes: 3_133_440,
            })
        );
        assert!(matches!(
            parse_stat("17219 (cat) R 1 2"),
            Err(ProcError::Parse { what: "utime", .. })
        ));
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1796207958\nprocesses 9\n").ok(),
            Some(1_796_207_958)
        );
        assert_eq!(
            parse_rss_bytes("Name:\tx\nVmSize:\t    3892 kB\nVmRSS:\t    1952 kB\n").ok(),
            Some(1952 * 1024)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            20000                524288               files     \n";
        assert_eq!(parse_max_open_files(limits).ok(), Some(20_000));
        assert_eq!(
            parse_max_open_files("Max open files   unlimited   unlimited  files\n").ok(),
            Some(u64::MAX)
        );
        let err = parse_max_open_files("Max processes 5 5 processes\n")
            .expect_err("no open files line")
            .to_string();
        assert_eq!(err, "/proc/self/limits: no Max open files in it");
    }

    #[test]
    fn a_scrape_has_build_info_and_on_linux_the_process_metrics() {
        let mut registry = Registry::default();
        register(&mut registry, "ingester");
        let mut text = String::new();
        encode(&mut text, &registry).expect("encoding into a String");
        let build = format!(
            "tdmq_backup_build_info{{version=\"{}\",daemon=\"ingester\"}} 1",
            proto::VERSION
        );
        assert!(text.lines().any(|l| l == build), "{text}");
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        };
        let names = [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_threads",
            "process_start_time_seconds",
        ];
        if !cfg!(target_os = "linux") {
            assert!(names.iter().all(|n| value(n).is_none()), "{text}");
            return;
        }
        for name in names {
            assert!(value(name).is_some(), "{name} missing from:\n{text}");
        }
        assert!(value("process_resident_memory_bytes") > Some(0.0), "{text}");
        assert!(value("process_open_fds") > Some(0.0), "{text}");
        assert!(value("process_threads") >= Some(1.0), "{text}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let started = value("process_start_time_seconds").unwrap_or_default();
        // The test process started a little while ago; boot time plus ticks is exact to 10 ms.
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "{started} vs {now}"
        );
    }
}
