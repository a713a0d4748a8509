//! One end-to-end test binary (ripgrep's layout): every test starts its own services on free
//! ports and the real daemon binaries. Build the binaries first: `cargo build --workspace --bins`
//! (scripts/test.sh does).

mod backup;
mod chunks;
mod cli;
mod consumer;
mod crash;
mod decode_faults;
mod deploy_files;
mod dir_format;
mod failover;
mod fairness;
mod fence;
mod formats;
mod full_disk;
mod harness_selftest;
mod metrics;
mod ops;
mod parquet;
mod probes;
mod query_recipes;
mod restore;
mod restore_producer;
mod resume;
mod rule_delete;
mod rules_edit;
mod security;
mod several_ingesters;
mod tls;
mod util;
mod verify;
