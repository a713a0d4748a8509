//! tdmq-backup-ingester as a library: [`run`] takes a bound listener and a shutdown future, so
//! the binary stays thin and tests can start it on port 0.
//!
//! A message's path, module by module:
//!
//! 1. `source` — the rule's Pulsar consumers, one per partition (`source::partition_consumers`),
//!    and what they may deliver: an entry the client cannot decode (`source::decode_fault`),
//!    bytes that are not what the producer sent (`source::record_extras`), ids that went
//!    backwards (`source::source_reset`).
//! 2. `consumer` — the rule's task: receives, drops redeliveries, encodes once
//!    (`consumer::receive`), stops a partition before an undecodable entry (`consumer::faults`).
//! 3. `spool` — the durable batch write (`consumer::spooling` → `spool::record_log` + sled via
//!    `spool::db`), dedup by id (`spool::redelivery`), cut into segments by `segment::cutter`,
//!    paused by `spool::disk` when space runs low.
//! 4. `seal` — the segment file, the exact object content, written by
//!    `segment::segment_writer`.
//! 5. `app` — the hand-off (`app::handoff`, served by `app::grpc`): the uploader lists sealed
//!    segments (`app::sealed_page`), streams one, and commits it (`app::commit_check`).
//! 6. `consumer::ack` — the rule's task acknowledges on Pulsar, in segment order, and the
//!    spool frees the segment. `app::history` keeps the rule's run log along the way.
//!
//! The rules themselves (create, edit, delete, pause, status) are `app`'s too.

pub mod app;
pub mod auth;
pub mod config;
pub mod consumer;
pub mod error;
pub mod metrics;
pub mod restore;
pub mod scoped_auth;
pub mod seal;
pub mod segment;
pub mod source;
pub mod spool;
pub mod stats;

use std::future::Future;

use anyhow::Context;
use tracing::info;

pub use config::IngesterConfig;
pub use error::IngesterError;

pub async fn run(
    config: IngesterConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token_scopes = auth::token_scopes(
        config.daemon.auth_token_file.as_deref(),
        config.uploader_token_file.as_deref(),
    )?;
    let metrics_listener = edge::metrics_http::bind(config.daemon.metrics_listen).await?;
    // Before sled opens anything: a directory of another format is refused, not misread.
    edge::dir_format::open(
        &config.data_dir,
        proto::types::dir_format::DirKind::IngesterData,
    )?;
    let app = app::IngesterApp::open(
        config.data_dir.clone(),
        config.history_max_entries,
        consumer::ConsumerLimits {
            max_spool_bytes: config.max_spool_bytes,
            receiver_queue: config.receiver_queue,
            receiver_queue_bytes: config.receiver_queue_bytes,
            disk_reserve_bytes: config.disk_reserve_bytes,
        },
        consumer::Membership {
            node_id: config.node_id.clone(),
            priority_level: config.priority_level,
        },
        config.pulsar_trust.clone(),
    )
    .await
    .with_context(|| format!("opening the spool in {}", config.data_dir.display()))?;
    let addr = listener.local_addr()?;
    if token_scopes.is_split() {
        info!("control-plane tokens required on every gRPC call but health checks and reflection: uploader_token_file's for the segment hand-off, auth_token_file's for everything else");
    } else if token_scopes.is_enabled() {
        info!("control-plane token required on every gRPC call but health checks and reflection");
    } else if !proto::auth::is_loopback(addr) {
        // Said before "ready", so whoever waits for that line sees it. Only reachable with allow_unauthenticated = true (the config refuses it otherwise).
        tracing::warn!(listen = %addr, "no control-plane token although listen is beyond loopback (allow_unauthenticated = true): anyone who reaches the port can change rules and commit segments");
    }
    info!(listen = %addr, data_dir = %config.data_dir.display(), version = proto::VERSION, "ingester ready");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(());
    });
    let metrics = metrics_listener.map(|listener| {
        info!(metrics = ?listener.local_addr().ok(), "serving /metrics");
        tokio::spawn(metrics::serve(listener, app.clone()))
    });
    let service = proto::IngesterServer::new(app::grpc::IngesterService::new(app.clone()))
        .max_decoding_message_size(16 * 1024 * 1024);
    // Probes and grpcurl: open to callers without the token (`scoped_auth`).
    let own = [proto::v1::ingester_server::SERVICE_NAME];
    let readiness = app.readiness().clone();
    let health = edge::health::health_server(readiness.clone(), &own);
    let (reflection_v1, reflection_v1alpha) =
        edge::health::reflection(&own).context("building the server reflection service")?;
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &config.daemon.tls {
        info!(cert = %tls.cert.display(), "serving gRPC over TLS");
        server = server
            .tls_config(tls.config.clone())
            .with_context(|| format!("tls_cert {}", tls.cert.display()))?;
    }
    server
        .layer(token_scopes)
        .add_service(service)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(
            // Nagle off: h2 writes a reply as several small frames, and with Nagle each unary call
            // waited ~40 ms for the client's delayed ACK.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                let _ = stop_rx.await;
                // Before the graceful stop begins: probes see NOT_SERVING, and health watches
                // end instead of holding the stop up.
                readiness.stopping();
                info!("shutting down");
            },
        )
        .await
        .context("serving gRPC")?;
    if let Some(task) = metrics {
        task.abort();
    }
    let grace = config.shutdown_grace;
    if tokio::time::timeout(grace, app.shutdown()).await.is_err() {
        tracing::warn!(grace = ?grace, "shutdown took longer than the grace period; exiting");
    }
    info!("ingester stopped");
    Ok(())
}

/// The log filter without `RUST_LOG`: pulsar's normal reconnect chatter is kept at warn.
pub const LOG_FILTER: &str = "info,pulsar=warn,sled=warn";
