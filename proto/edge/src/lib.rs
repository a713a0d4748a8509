//! What every tdmq-backup process does at its edges, written once so that the daemons start, log
//! and fail the same way: open their own directory by its format stamp ([`dir_format`]), read
//! their TLS and token files ([`tls`], [`token_file`]), check the settings they share
//! ([`settings`]), log to stderr ([`logging`]), serve `/metrics`, `/healthz` and `/readyz`
//! ([`metrics_http`]) with their build and process metrics ([`process_metrics`]), answer probes
//! and discovery over gRPC ([`health`]), stop on SIGINT/SIGTERM ([`shutdown`]), die at an armed
//! crash point ([`failpoint`]) and report a fatal error as one line with exit code 1 ([`fatal`]).
//!
//! `proto` stays the pure contract (types, wire rules, no IO); this crate is its IO-doing
//! neighbour. It is not a grab-bag for code two crates happen to share: what belongs here is what
//! *every* process does at its boundary with the operating system, the network or the operator.
//! A daemon's own job (the spool, the uploads) and a shared format (that is `proto`) do not.

pub mod dir_format;
pub mod failpoint;
pub mod fatal;
pub mod health;
pub mod logging;
pub mod metrics_http;
pub mod process_metrics;
pub mod settings;
pub mod shutdown;
pub mod tls;
pub mod token_file;
