//! Ingester configuration: a TOML file whose every key can also be given as a flag or an
//! environment variable (flag > environment > file > default).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use edge::settings::{DaemonInput, DaemonSettings, NumberOrText};
use serde::Deserialize;

/// tdmq-backup-ingester: consumes each rule's Pulsar subscription into a durable local spool,
/// cuts it into segments and hands sealed segments to the uploader. Messages are acknowledged on
/// Pulsar only after their segment is stored.
#[derive(Debug, Parser)]
#[command(name = "tdmq-backup-ingester", version)]
pub struct Args {
    /// TOML config file (see examples/ingester.toml); flags and environment override its keys.
    #[arg(long, env = "TDMQ_BACKUP_INGESTER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the spool (sled database, segment files, quarantine) lives. [default: ./ingester-data]
    #[arg(long, env = "TDMQ_BACKUP_INGESTER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC address for ctl and the uploader. [default: 127.0.0.1:7601]
    #[arg(long, env = "TDMQ_BACKUP_INGESTER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Log format: text or json. [default: text]
    #[arg(long, env = "TDMQ_BACKUP_INGESTER_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Run-history entries kept per rule (older ones are dropped). [default: 1000]
    #[arg(long, env = "TDMQ_BACKUP_INGESTER_HISTORY_MAX_ENTRIES")]
    pub history_max_entries: Option<usize>,
    /// Most record bytes the spool may hold (e.g. 20GB), counted as the records' JSON lines (the
    /// spool's own files are smaller); at the limit the ingester stops pulling from Pulsar until
    /// uploads free space. Nothing is acknowledged meanwhile. [default: no limit]
    #[arg(long, env = "TDMQ_BACKUP_INGESTER_MAX_SPOOL_BYTES")]
    pub max_spool_bytes: Option<String>,
    /// Free space kept on data_dir's filesystem (e.g. 1GB), besides what sealing the segments
    /// not yet sealed will write: below it the ingester stops pulling from Pulsar until uploads
    /// free space, so sealing, commits and the database always have room. Nothing is
    /// acknowledged meanwhile. Applies even without max_spool_bytes. [default: 256MB]
    #[arg(long, env = "TDMQ_BACKUP_INGESTER_DISK_RESERVE_BYTES")]
    pub disk_reserve_bytes: Option<String>,
    /// Messages each rule's consumer lets the broker send ahead (Pulsar flow-control permits).
    /// Memory held for them is up to this × the largest message — or × the largest producer
    /// batch, since the client queues whole batches: lower it for large messages or batches
    /// (e.g. 50 for 1 MiB ones). [default: 1000]
    #[arg(long, env = "TDMQ_BACKUP_INGESTER_RECEIVER_QUEUE")]
    pub receiver_queue: Option<u32>,
    /// Bytes each rule's consumer may hold received but not yet spooled (e.g. 32MB; 0: no byte
    /// bound). When messages are large, the consumer lowers its permits below receiver_queue
    /// so that permits × message size stays near this. [default: 8MB]
    #[arg(long, env = "TDMQ_BACKUP_INGESTER_RECEIVER_QUEUE_BYTES")]
    pub receiver_queue_bytes: Option<String>,
    /// How long a graceful shutdown (SIGTERM) may take before the process exits. [default: 10s]
    #[arg(long, env = "TDMQ_BACKUP_INGESTER_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    /// File holding the control-plane token. When set, every gRPC call (ctl, uploader) must
    /// send `authorization: Bearer <token>` or is refused as unauthenticated; give ctl the same
    /// file with `--token-file` and the uploader with its own auth_token_file. [default: none]
    #[arg(
        long,
        env = "TDMQ_BACKUP_INGESTER_AUTH_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub auth_token_file: Option<PathBuf>,
    /// File holding a second token, for the uploader only: when set, the segment hand-off
    /// (ListSealed, ReadSegment, CommitSegment, ReportUploadFailure) needs this token and every
    /// other call needs auth_token_file's, so an operator's token cannot commit segments and
    /// the uploader's cannot change rules. Needs auth_token_file. [default: none]
    #[arg(
        long,
        env = "TDMQ_BACKUP_INGESTER_UPLOADER_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub uploader_token_file: Option<PathBuf>,
    /// Start without auth_token_file although `listen` is not a loopback address. Only for a
    /// port that something else guards (a firewall, a private network): without a token anyone
    /// who reaches it can change rules and commit segments. [default: false]
    #[arg(long, env = "TDMQ_BACKUP_INGESTER_ALLOW_UNAUTHENTICATED", num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub allow_unauthenticated: Option<bool>,
    /// Address for the Prometheus endpoint `GET /metrics`, e.g. 127.0.0.1:7611; empty turns
    /// it off. [default: off]
    #[arg(long, env = "TDMQ_BACKUP_INGESTER_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// PEM certificate (chain) for the gRPC server; with tls_key, ctl and the uploader must
    /// connect with `https://` URLs. Set both or neither. [default: plain HTTP/2]
    #[arg(long, env = "TDMQ_BACKUP_INGESTER_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of tls_cert. [default: none]
    #[arg(long, env = "TDMQ_BACKUP_INGESTER_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// This ingester's name towards Pulsar: its consumers are named `tdmq-backup-RULE-NODE_ID`,
    /// so two ingesters on one subscription are told apart (letters, digits, `.`, `_`, `-`).
    /// [default: the host name]
    #[arg(long, env = "TDMQ_BACKUP_INGESTER_NODE_ID", value_name = "NAME")]
    pub node_id: Option<String>,
    /// Pulsar's consumer priority for this ingester's consumers (0 highest). On a Failover
    /// subscription the ingesters of the lowest level present share the partitions and the
    /// others stand by, taking partitions over only when those leave. [default: 0]
    #[arg(
        long,
        env = "TDMQ_BACKUP_INGESTER_PRIORITY_LEVEL",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub priority_level: Option<i64>,
    /// PEM CA certificate(s) trusted for `pulsar+ssl://` brokers (rules' consumers and restore
    /// targets) besides the public roots; for a cluster with a private CA.
    /// [default: the public roots only]
    #[arg(long, env = "TDMQ_BACKUP_INGESTER_PULSAR_CA_FILE", value_name = "FILE")]
    pub pulsar_ca_file: Option<PathBuf>,
}

/// Room for a few batches of received messages (4 MB each) and for the database, whose file
/// grows in steps before its space is reused.
const DEFAULT_DISK_RESERVE: &str = "256MB";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    log_format: Option<String>,
    history_max_entries: Option<usize>,
    shutdown_grace: Option<String>,
    max_spool_bytes: Option<NumberOrText>,
    disk_reserve_bytes: Option<NumberOrText>,
    receiver_queue: Option<u32>,
    receiver_queue_bytes: Option<NumberOrText>,
    auth_token_file: Option<PathBuf>,
    uploader_token_file: Option<PathBuf>,
    allow_unauthenticated: Option<bool>,
    metrics_listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    node_id: Option<String>,
    priority_level: Option<i64>,
    pulsar_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct IngesterConfig {
    /// listen, log_format, metrics_listen, auth_token_file, allow_unauthenticated, TLS.
    pub daemon: DaemonSettings,
    pub data_dir: PathBuf,
    pub history_max_entries: usize,
    pub shutdown_grace: std::time::Duration,
    /// 0: no limit.
    pub max_spool_bytes: u64,
    /// Free bytes kept on data_dir's filesystem beyond what sealing needs (`disk.rs`).
    pub disk_reserve_bytes: u64,
    pub receiver_queue: u32,
    /// 0: no byte bound.
    pub receiver_queue_bytes: u64,
    /// The uploader's own token (segment hand-off only); read at start-up like auth_token_file.
    pub uploader_token_file: Option<PathBuf>,
    pub node_id: String,
    /// 0 (the broker's default) to i32::MAX.
    pub priority_level: i32,
    /// `pulsar_ca_file`, read and checked at start.
    pub pulsar_trust: crate::source::trust::PulsarTrust,
}

impl IngesterConfig {
    pub fn from_args(args: Args) -> anyhow::Result<IngesterConfig> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("config {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let grace = args
            .shutdown_grace
            .or(file.shutdown_grace)
            .unwrap_or_else(|| "10s".into());
        let shutdown_grace = humantime::parse_duration(&grace)
            .with_context(|| format!("shutdown_grace {grace:?} is not a duration like 10s"))?;
        let history_max_entries = args
            .history_max_entries
            .or(file.history_max_entries)
            .unwrap_or(1000);
        if history_max_entries == 0 {
            bail!("history_max_entries must be at least 1");
        }
        let max_spool_bytes = match size_setting(args.max_spool_bytes, file.max_spool_bytes) {
            None => 0,
            Some(text) => parse_size("max_spool_bytes", &text)?,
        };
        let disk_reserve_bytes = parse_size(
            "disk_reserve_bytes",
            &size_setting(args.disk_reserve_bytes, file.disk_reserve_bytes)
                .unwrap_or_else(|| DEFAULT_DISK_RESERVE.into()),
        )?;
        let receiver_queue = args.receiver_queue.or(file.receiver_queue).unwrap_or(1000);
        if receiver_queue == 0 {
            bail!("receiver_queue must be at least 1");
        }
        let receiver_queue_bytes = parse_size(
            "receiver_queue_bytes",
            &size_setting(args.receiver_queue_bytes, file.receiver_queue_bytes)
                .unwrap_or_else(|| "8MB".into()),
        )?;
        let uploader_token_file = args
            .uploader_token_file
            .or(file.uploader_token_file)
            .filter(|p| !p.as_os_str().is_empty());
        let auth_token_file = args.auth_token_file.or(file.auth_token_file);
        if uploader_token_file.is_some() && auth_token_file.as_deref().is_none_or(is_empty_path) {
            // Without it the rule RPCs would be open while the segment ones are guarded.
            bail!("uploader_token_file needs auth_token_file (the operators' token) as well");
        }
        let daemon = DaemonSettings::resolve(DaemonInput {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7601))),
            log_format: args.log_format.or(file.log_format),
            metrics_listen: args.metrics_listen.or(file.metrics_listen),
            metrics_listen_example: "127.0.0.1:7611",
            auth_token_file,
            allow_unauthenticated: args.allow_unauthenticated.or(file.allow_unauthenticated),
            tls_cert: args.tls_cert.or(file.tls_cert),
            tls_key: args.tls_key.or(file.tls_key),
        })?;
        let node_id = match args.node_id.or(file.node_id) {
            Some(id) => id.trim().to_string(),
            None => default_node_id(),
        };
        validate_node_id(&node_id)?;
        let priority_level = priority_level(args.priority_level.or(file.priority_level))?;
        let pulsar_trust = match args.pulsar_ca_file.or(file.pulsar_ca_file) {
            Some(path) if !is_empty_path(&path) => {
                crate::source::trust::PulsarTrust::from_file(&path)?
            }
            _ => crate::source::trust::PulsarTrust::default(),
        };
        Ok(IngesterConfig {
            daemon,
            node_id,
            priority_level,
            pulsar_trust,
            max_spool_bytes,
            disk_reserve_bytes,
            receiver_queue,
            receiver_queue_bytes,
            uploader_token_file,
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./ingester-data")),
            history_max_entries,
            shutdown_grace,
        })
    }
}

/// A size from its flag, else its file key (an integer of bytes or a string like "20GB").
fn size_setting(flag: Option<String>, file: Option<NumberOrText>) -> Option<String> {
    flag.or(file.map(NumberOrText::into_text))
}

fn parse_size(key: &str, text: &str) -> anyhow::Result<u64> {
    proto::types::rule::parse_size(text).map_err(|e| anyhow::anyhow!("{key}: {e}"))
}

fn is_empty_path(path: &std::path::Path) -> bool {
    path.as_os_str().is_empty()
}

/// The host name, made safe for a consumer name.
fn default_node_id() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let safe: String = host
        .chars()
        .map(|c| if node_id_char(c) { c } else { '-' })
        .take(64)
        .collect();
    if safe.is_empty() {
        "ingester".to_string()
    } else {
        safe
    }
}

fn node_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Pulsar takes any non-negative 32-bit level; a negative one is a typo, not a wish.
fn priority_level(level: Option<i64>) -> anyhow::Result<i32> {
    let level = level.unwrap_or(0);
    match i32::try_from(level) {
        Ok(l) if l >= 0 => Ok(l),
        _ => bail!(
            "priority_level {level} must be between 0 (the highest priority) and {}",
            i32::MAX
        ),
    }
}

fn validate_node_id(id: &str) -> anyhow::Result<()> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(node_id_char) {
        bail!("node_id {id:?} must be 1-64 letters, digits, '.', '_' or '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("tdmq-backup-ingester").chain(list.iter().copied()))
            .expect("args parse")
    }

    #[test]
    fn pulsar_ca_file_is_read_and_checked_at_start() -> anyhow::Result<()> {
        let config = IngesterConfig::from_args(args(&[]))?;
        assert!(config.pulsar_trust.ca_pem().is_none());
        let dir = tempfile::tempdir()?;
        let bad = dir.path().join("ca.pem");
        std::fs::write(&bad, "not a certificate\n")?;
        let bad = bad.to_string_lossy().into_owned();
        let err = IngesterConfig::from_args(args(&["--pulsar-ca-file", &bad]))
            .err()
            .context("a file without a certificate is refused")?;
        let text = format!("{err:#}");
        assert!(
            text.starts_with(&format!("pulsar_ca_file {bad}: holds no PEM certificate")),
            "{text}"
        );
        Ok(())
    }

    #[test]
    fn defaults_then_file_then_flags() -> anyhow::Result<()> {
        let c = IngesterConfig::from_args(args(&[]))?;
        assert_eq!(c.daemon.listen.to_string(), "127.0.0.1:7601");
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("i.toml");
        std::fs::write(
            &path,
            "data_dir = \"/var/lib/x\"\nlisten = \"127.0.0.1:9001\"\n",
        )?;
        let p = path.to_string_lossy().to_string();
        let c = IngesterConfig::from_args(args(&["--config", &p]))?;
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/x"));
        let c = IngesterConfig::from_args(args(&["--config", &p, "--listen", "127.0.0.1:9002"]))?;
        assert_eq!(c.daemon.listen.port(), 9002);
        Ok(())
    }

    #[test]
    fn listen_beyond_loopback_needs_a_token_file_or_allow_unauthenticated() -> anyhow::Result<()> {
        let err = IngesterConfig::from_args(args(&["--listen", "0.0.0.0:7601"]))
            .expect_err("open control plane");
        let text = format!("{err:#}");
        assert!(
            text.contains("auth_token_file") && text.contains("allow_unauthenticated"),
            "{text}"
        );
        let c = IngesterConfig::from_args(args(&[
            "--listen",
            "0.0.0.0:7601",
            "--auth-token-file",
            "/etc/t",
        ]))?;
        assert!(!c.daemon.allow_unauthenticated);
        let c = IngesterConfig::from_args(args(&[
            "--listen",
            "0.0.0.0:7601",
            "--allow-unauthenticated",
        ]))?;
        assert!(c.daemon.allow_unauthenticated);
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("i.toml");
        std::fs::write(
            &path,
            "listen = \"10.0.0.21:7601\"\nallow_unauthenticated = true\n",
        )?;
        let p = path.to_string_lossy().to_string();
        assert!(
            IngesterConfig::from_args(args(&["--config", &p]))?
                .daemon
                .allow_unauthenticated
        );
        let err =
            IngesterConfig::from_args(args(&["--config", &p, "--allow-unauthenticated=false"]))
                .expect_err("the flag beats the file");
        assert!(format!("{err:#}").contains("10.0.0.21:7601"), "{err:#}");
        Ok(())
    }

    #[test]
    fn uploader_token_file_needs_auth_token_file() -> anyhow::Result<()> {
        let err = IngesterConfig::from_args(args(&["--uploader-token-file", "/etc/u"]))
            .expect_err("alone");
        let text = format!("{err:#}");
        assert!(text.contains("uploader_token_file") && text.contains("auth_token_file"));
        let c = IngesterConfig::from_args(args(&[
            "--uploader-token-file",
            "/etc/u",
            "--auth-token-file",
            "/etc/t",
        ]))?;
        assert_eq!(c.uploader_token_file, Some(PathBuf::from("/etc/u")));
        Ok(())
    }

    #[test]
    fn receiver_queue_defaults_and_refuses_zero() -> anyhow::Result<()> {
        assert_eq!(IngesterConfig::from_args(args(&[]))?.receiver_queue, 1000);
        assert_eq!(
            IngesterConfig::from_args(args(&["--receiver-queue", "50"]))?.receiver_queue,
            50
        );
        let err = IngesterConfig::from_args(args(&["--receiver-queue", "0"])).expect_err("zero");
        assert!(err.to_string().contains("receiver_queue"), "{err}");
        Ok(())
    }

    #[test]
    fn receiver_queue_bytes_defaults_to_8mb_and_names_a_bad_size() -> anyhow::Result<()> {
        let config = IngesterConfig::from_args(args(&[]))?;
        assert_eq!(config.receiver_queue_bytes, 8_000_000);
        let off = IngesterConfig::from_args(args(&["--receiver-queue-bytes", "0"]))?;
        assert_eq!(off.receiver_queue_bytes, 0);
        let err = IngesterConfig::from_args(args(&["--receiver-queue-bytes", "lots"]))
            .expect_err("not a size");
        assert!(err.to_string().contains("receiver_queue_bytes"), "{err}");
        Ok(())
    }

    #[test]
    fn disk_reserve_bytes_defaults_to_256mb_and_names_a_bad_size() -> anyhow::Result<()> {
        assert_eq!(
            IngesterConfig::from_args(args(&[]))?.disk_reserve_bytes,
            256_000_000
        );
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("i.toml");
        std::fs::write(&path, "disk_reserve_bytes = \"2GB\"\n")?;
        let p = path.to_string_lossy().to_string();
        let c = IngesterConfig::from_args(args(&["--config", &p]))?;
        assert_eq!(c.disk_reserve_bytes, 2_000_000_000);
        let c = IngesterConfig::from_args(args(&["--disk-reserve-bytes", "0"]))?;
        assert_eq!(c.disk_reserve_bytes, 0, "0: only what sealing needs");
        let err = IngesterConfig::from_args(args(&["--disk-reserve-bytes", "much"]))
            .expect_err("not a size");
        assert!(err.to_string().contains("disk_reserve_bytes"), "{err}");
        Ok(())
    }

    #[test]
    fn sizes_in_the_file_are_integers_or_strings() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("i.toml");
        let p = path.to_string_lossy().to_string();
        std::fs::write(
            &path,
            "max_spool_bytes = 1048576\ndisk_reserve_bytes = 0\nreceiver_queue_bytes = 4000000\n",
        )?;
        let c = IngesterConfig::from_args(args(&["--config", &p]))?;
        assert_eq!(
            (
                c.max_spool_bytes,
                c.disk_reserve_bytes,
                c.receiver_queue_bytes
            ),
            (1_048_576, 0, 4_000_000)
        );
        std::fs::write(
            &path,
            "max_spool_bytes = \"1 MiB\"\ndisk_reserve_bytes = \"1GB\"\nreceiver_queue_bytes = \"16MB\"\n",
        )?;
        let c = IngesterConfig::from_args(args(&["--config", &p]))?;
        assert_eq!(
            (
                c.max_spool_bytes,
                c.disk_reserve_bytes,
                c.receiver_queue_bytes
            ),
            (1_048_576, 1_000_000_000, 16_000_000)
        );
        // The flag beats the file, and takes a bare number of bytes too.
        let c = IngesterConfig::from_args(args(&["--config", &p, "--max-spool-bytes", "2048"]))?;
        assert_eq!(c.max_spool_bytes, 2048);
        for bad in [
            "max_spool_bytes = -1",
            "disk_reserve_bytes = 1.5",
            "receiver_queue_bytes = true",
        ] {
            std::fs::write(&path, format!("{bad}\n"))?;
            let err = IngesterConfig::from_args(args(&["--config", &p])).expect_err(bad);
            let key = bad.split(' ').next().unwrap_or_default();
            assert!(format!("{err:#}").contains(key), "{bad}: {err:#}");
        }
        std::fs::write(&path, "max_spool_bytes = \"lots\"\n")?;
        let err = IngesterConfig::from_args(args(&["--config", &p])).expect_err("not a size");
        assert!(err.to_string().starts_with("max_spool_bytes: "), "{err}");
        Ok(())
    }

    #[test]
    fn unknown_keys_are_refused_by_name() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("i.toml");
        std::fs::write(&path, "data_dri = \"x\"\n")?;
        let p = path.to_string_lossy().to_string();
        let err = IngesterConfig::from_args(args(&["--config", &p])).expect_err("typo refused");
        assert!(format!("{err:#}").contains("data_dri"), "{err:#}");
        Ok(())
    }

    #[test]
    fn node_id_defaults_to_a_safe_host_name_and_refuses_odd_names() {
        let default = default_node_id();
        assert!(validate_node_id(&default).is_ok(), "{default:?}");
        assert!(validate_node_id("backup-a.vpc_1").is_ok());
        for bad in ["", "a b", "x/y", &"n".repeat(65)] {
            let err = validate_node_id(bad).expect_err(bad).to_string();
            assert!(err.contains("node_id"), "{err}");
        }
    }

    #[test]
    fn priority_level_comes_from_the_flag_or_the_file_and_refuses_what_pulsar_would_not_take(
    ) -> anyhow::Result<()> {
        assert_eq!(IngesterConfig::from_args(args(&[]))?.priority_level, 0);
        let c = IngesterConfig::from_args(args(&["--priority-level", "2"]))?;
        assert_eq!(c.priority_level, 2);
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("i.toml");
        std::fs::write(&path, "priority_level = 1\n")?;
        let p = path.to_string_lossy().to_string();
        assert_eq!(
            IngesterConfig::from_args(args(&["--config", &p]))?.priority_level,
            1
        );
        for bad in ["-1", "2147483648"] {
            let err = IngesterConfig::from_args(args(&["--priority-level", bad]))
                .expect_err(bad)
                .to_string();
            assert!(
                err.contains("priority_level") && err.contains(bad),
                "{bad}: {err}"
            );
        }
        Ok(())
    }

    #[test]
    fn example_configs_parse() -> anyhow::Result<()> {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ingester.toml");
        let c = IngesterConfig::from_args(args(&["--config", &path.to_string_lossy()]))?;
        assert_eq!(
            c.daemon.metrics_listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:7611")
        );
        assert!(c.daemon.auth_token_file.is_some());
        Ok(())
    }

    #[test]
    fn metrics_listen_empty_is_off_and_garbage_is_named() -> anyhow::Result<()> {
        let c = IngesterConfig::from_args(args(&["--metrics-listen", ""]))?;
        assert_eq!(c.daemon.metrics_listen, None);
        let c = IngesterConfig::from_args(args(&["--metrics-listen", "127.0.0.1:0"]))?;
        assert!(c.daemon.metrics_listen.is_some());
        let err = IngesterConfig::from_args(args(&["--metrics-listen", "localhost"]))
            .expect_err("not an address");
        assert!(format!("{err:#}").contains("metrics_listen"), "{err:#}");
        Ok(())
    }

    #[test]
    fn tls_cert_needs_tls_key_and_files_must_be_readable() -> anyhow::Result<()> {
        assert!(IngesterConfig::from_args(args(&[]))?.daemon.tls.is_none());
        let err = IngesterConfig::from_args(args(&["--tls-cert", "/etc/c.pem"]))
            .expect_err("cert without key");
        assert!(format!("{err:#}").contains("tls_key is missing"), "{err:#}");
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("i.toml");
        std::fs::write(&path, "tls_key = \"/etc/k.pem\"\n")?;
        let err = IngesterConfig::from_args(args(&["--config", &path.to_string_lossy()]))
            .expect_err("key without cert");
        assert!(
            format!("{err:#}").contains("tls_cert is missing"),
            "{err:#}"
        );
        let missing = dir
            .path()
            .join("missing.pem")
            .to_string_lossy()
            .into_owned();
        let err = IngesterConfig::from_args(args(&["--tls-cert", &missing, "--tls-key", &missing]))
            .expect_err("unreadable");
        assert!(
            format!("{err:#}").starts_with(&format!("tls_cert {missing}: cannot read it")),
            "{err:#}"
        );
        Ok(())
    }
}
