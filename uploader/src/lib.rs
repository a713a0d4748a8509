//! tdmq-backup-uploader: pulls sealed segments from the ingester, writes each one to COS / S3
//! (or the embedded `file://` store), and commits it back so the ingester can acknowledge its
//! messages on Pulsar.
//!
//! - [`config`]: the TOML/flag/env configuration;
//! - [`puller`]: the loop (list sealed → upload → commit, with per-segment backoff);
//! - [`upload`]: one attempt at one segment; [`verify`]: length and CRC32C while streaming;
//! - [`ingester`] / [`committer`]: the hand-off RPCs;
//! - [`store`]: the S3 and file backends; [`status`]: the Uploader gRPC service;
//! - [`manifest`]: the bucket's record of what was stored (written before each commit).

pub mod audit;
pub mod auth;
pub mod backoff;
pub mod codec;
pub mod committer;
pub mod config;
pub mod error;
pub mod ingester;
pub mod local_read;
pub mod manifest;
pub mod metrics;
pub mod multipart;
pub mod puller;
pub mod restore;
pub mod rollup;
pub mod status;
pub mod store;
pub mod upload;
pub mod verify;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::watch;

pub use config::UploaderConfig;
pub use error::UploadError;

use crate::backoff::Backoff;
use crate::local_read::LocalReads;
use crate::puller::PullerSettings;
use crate::status::{StatusState, UploaderService};
use crate::store::{StoreRouter, StoreSettings};
use crate::upload::UploadContext;

/// The log filter without `RUST_LOG`.
pub const LOG_FILTER: &str = "info";

/// Serves the Uploader status service on `listener` and runs the upload pipeline until
/// `shutdown` completes; then stops taking segments and lets uploads in flight finish (up to
/// [`puller::SHUTDOWN_GRACE`]).
pub async fn run(
    config: UploaderConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Holds the resumable multipart state (`multipart/`); opened now so that permissions
    // problems, or a directory of another format, show at start-up, not on the first multipart
    // upload.
    edge::dir_format::open(
        config.state_dir(),
        proto::types::dir_format::DirKind::UploaderState,
    )?;
    let token = auth::ControlToken::load_split(
        config.daemon.auth_token_file.as_deref(),
        config.ingester_token_file.as_deref(),
    )?;
    let sends_token =
        config.daemon.auth_token_file.is_some() || config.ingester_token_file.is_some();
    let metrics_listener = edge::metrics_http::bind(config.daemon.metrics_listen).await?;

    let settings = StoreSettings::from_config(&config);
    let status = Arc::new(StatusState::new(settings.describe()));
    status.expect_ingesters(&config.ingesters);
    let stores = Arc::new(StoreRouter::new(settings));
    // One pipeline per ingester, sharing the stores (and so the memory budget of their parts).
    let contexts: Vec<Arc<UploadContext>> = config
        .ingesters
        .iter()
        .map(|url| {
            Arc::new(UploadContext {
                ingester: url.clone(),
                stores: stores.clone(),
                status: status.clone(),
                journal: if config.ingesters.len() == 1 {
                    multipart::Journal::new(config.state_dir())
                } else {
                    multipart::Journal::for_ingester(config.state_dir(), url)
                },
                local_reads: LocalReads::new(config.read_local)
                    .with_ingester_data_dir(config.ingester_data_dir.clone()),
            })
        })
        .collect();
    // The first ingester's: restore produces through it, verify asks it for the rule.
    let ctx = contexts
        .first()
        .cloned()
        .context("the uploader has no ingester")?;
    let (stop_tx, stop_rx) = watch::channel(false);

    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    let mut server_stop = stop_rx.clone();
    let metrics = metrics_listener.map(|listener| {
        tracing::info!(metrics = ?listener.local_addr().ok(), "serving /metrics");
        tokio::spawn(metrics::serve(
            listener,
            status.clone(),
            stores.request_counts().clone(),
        ))
    });
    for url in &config.ingesters {
        if sends_token && proto::auth::token_travels_in_clear(url) {
            // Still sent: the network underneath may be encrypted (a VPN, a service mesh).
            tracing::warn!(ingester = %url, "the control-plane token goes to the ingester unencrypted (plain http:// beyond loopback); serve TLS there (tls_cert, tls_key) and use an https:// ingester URL");
        }
    }
    if token.require.is_enabled() {
        tracing::info!("control-plane token required on every gRPC call but health checks and reflection, and sent to the ingester");
    } else if !proto::auth::is_loopback(addr) {
        // Only reachable with allow_unauthenticated = true (the config refuses it otherwise).
        tracing::warn!(listen = %addr, "no control-plane token although listen is beyond loopback (allow_unauthenticated = true): anyone who reaches the port can read the uploader's status");
    }
    let restore = restore::RestoreManager::open(
        config.state_dir(),
        ctx.clone(),
        restore::IngesterLink {
            url: ctx.ingester.clone(),
            tls: config.ingester_tls.clone(),
            auth: token.send.clone(),
            backoff: Backoff::new(config.max_backoff),
        },
        stop_rx.clone(),
    )
    .context("opening the restore jobs")?;
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &config.daemon.tls {
        tracing::info!(cert = %tls.cert.display(), "serving gRPC over TLS");
        server = server
            .tls_config(tls.config.clone())
            .with_context(|| format!("tls_cert {}", tls.cert.display()))?;
    }
    // The token guards the Uploader service only: the probes and grpcurl's reflection carry
    // none, and tell only whether the uploader is ready and what the schema is.
    let own = [proto::v1::uploader_server::SERVICE_NAME];
    let readiness = status.readiness().clone();
    let health = edge::health::health_server(readiness.clone(), &own);
    let (reflection_v1, reflection_v1alpha) =
        edge::health::reflection(&own).context("building the server reflection service")?;
    let ingester_client = ingester::lazy(&ctx.ingester, config.ingester_tls.clone(), &token.send)?;
    let server = tokio::spawn(
        server
            .add_service(proto::UploaderServer::with_interceptor(
                UploaderService::new(status)
                    .with_restore(restore)
                    .with_auditor(audit::Auditor {
                        ctx: ctx.clone(),
                        ingester: ingester_client.clone(),
                        scratch_dir: config.state_dir().to_path_buf(),
                    }),
                token.require.clone(),
            ))
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(
                // Nagle off: h2 writes a reply as several small frames, and with Nagle each unary call
                // waited ~40 ms for the client's delayed ACK.
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async move {
                    let _ = server_stop.wait_for(|stop| *stop).await;
                    // Before the graceful stop begins: probes see NOT_SERVING, and health
                    // watches end instead of holding the stop up.
                    readiness.stopping();
                },
            ),
    );
    // Like the ingester's "ingester ready listen=ADDR": the bound address, so whoever started it
    // on port 0 learns where it listens (the bound /metrics address is in "serving /metrics").
    tracing::info!(listen = %addr, ingester = %config.ingesters.join(","), store = %ctx.stores.settings().describe(), version = proto::VERSION, "uploader ready");

    let mut rollups = Vec::new();
    let mut pipelines = Vec::new();
    for context in contexts {
        let client = ingester::lazy(&context.ingester, config.ingester_tls.clone(), &token.send)?;
        rollups.push(tokio::spawn(rollup::run(
            context.clone(),
            client,
            stop_rx.clone(),
        )));
        pipelines.push(puller::run_pipeline(
            PullerSettings {
                ingester: context.ingester.clone(),
                ingester_tls: config.ingester_tls.clone(),
                auth: token.send.clone(),
                concurrency: config.concurrency,
                backoff: Backoff::new(config.max_backoff),
            },
            context,
            stop_rx.clone(),
        ));
    }
    drop(stop_rx);
    // Every pipeline to its end; the first failure ends the uploader (as one pipeline's did).
    let pipeline = async move { futures::future::try_join_all(pipelines).await.map(|_| ()) };
    tokio::pin!(pipeline);
    tokio::pin!(shutdown);
    let result = tokio::select! {
        () = &mut shutdown => {
            tracing::info!("shutdown requested");
            let _ = stop_tx.send(true);
            pipeline.await
        }
        result = &mut pipeline => result,
    };
    let _ = stop_tx.send(true);
    if let Some(task) = metrics {
        task.abort();
    }
    // A rollup cut short is written again at the next start.
    for task in rollups {
        task.abort();
    }
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %error::error_chain(&err), "status service failed"),
        Err(err) => tracing::warn!(error = %err, "status service task failed"),
    }
    result.context("upload pipeline")?;
    tracing::info!("uploader stopped");
    Ok(())
}
