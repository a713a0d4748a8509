//! Test harness for tdmq-backup: real services (pulsar-lite behind a relay, in-process s3s-fs),
//! the project's daemons as processes, a whole [`Stack`] of them for the e2e tests and the
//! bench, deterministic sample messages and an exactly-once oracle.
//!
//! Every test starts its own services on ports the kernel picks (bound to port 0 and kept, see
//! [`ports`]) in temporary directories; the guards kill or stop them on drop, so tests run in
//! parallel and leave nothing behind (docs/dependencies.md §3).

pub mod certs;
pub mod daemon_log;
pub mod daemons;
pub mod drain;
pub mod example_config;
pub mod http;
pub mod oracle;
pub mod parquet_object;
pub mod ports;
pub mod producer;
pub mod python;
pub mod services;
pub mod stack;

pub use services::{pulsar_lite, relay, s3};

pub use certs::{CertFiles, TestCerts};
pub use daemon_log::stored_segment_sources;
pub use daemons::{bin_path, ctl, wait_for_log, Daemon};
pub use drain::{assert_subscription_drained, backlog_before_marker};
pub use oracle::{
    check_exactly_once, is_manifest_key, read_all, read_dir_store, BackupObject, Report,
};
pub use ports::{PortHold, PortKeeper};
pub use producer::{produce, produce_zlib, sample_messages, SampleMessage};
pub use services::fault_proxy::{FaultProxy, Mode as FaultMode};
pub use services::pulsar_lite::PulsarLite;
pub use services::relay::{DamagedEntry, FaultPlan, Faults, Relay};
pub use services::s3::S3Server;
pub use stack::{Extra, Stack, StackBuilder, StackDir};

/// Routes `tracing` output to the test's captured output, filtered by `RUST_LOG` (default:
/// warnings, minus pulsar-rs's noisy reconnect logs, docs/dependencies.md §6). Safe to call from
/// every test; only the first call installs the subscriber.
pub fn init_test_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,pulsar=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
