//! The HTTP port both daemons serve (`metrics_listen`): `GET /metrics` for Prometheus scrapes,
//! and the probes `GET /healthz` (liveness: 200 `ok` while the process serves) and `GET /readyz`
//! (readiness: 200 `ready`, or 503 `not ready: <what>` from the daemon's [`Readiness`]). axum
//! over HTTP/1.1 (the axum tonic already links), the bodies made at request time, and
//! `Connection: close` on every reply — a scrape or probe is one request every few seconds, and
//! a client that reads until the connection closes (`curl --http1.0`, a shell `nc`) gets its
//! answer.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context as _;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::map_response;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::health::Readiness;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `metrics_listen` when it is set; the error names the key, so it reads like a config error.
pub async fn bind(addr: Option<SocketAddr>) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .with_context(|| format!("metrics_listen: binding {addr}"))
}

/// The routes: `GET /metrics` answers what `render` produces (or 500 with its error),
/// `/healthz` and `/readyz` the probes, any other path 404, any other method 405.
pub fn router<F, Fut>(readiness: Readiness, render: F) -> Router
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<String, String>> + Send + 'static,
{
    Router::new()
        .route("/metrics", get(move || scrape(render.clone())))
        // Liveness: answering at all is the proof; it stays 200 while the daemon shuts down, so
        // a liveness probe never kills a daemon that is finishing its uploads.
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(move || ready(readiness.clone())))
        .fallback(|| async { (StatusCode::NOT_FOUND, "try /metrics, /healthz or /readyz\n") })
        .layer(map_response(close_after))
}

/// 200 `ready`, or 503 naming what is not (no detail beyond that: this port has no token).
async fn ready(readiness: Readiness) -> Response {
    match readiness.check() {
        Ok(()) => "ready\n".into_response(),
        Err(not_ready) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {not_ready}\n"),
        )
            .into_response(),
    }
}

async fn close_after(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

async fn scrape<F, Fut>(render: F) -> Response
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<String, String>>,
{
    match render().await {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("metrics unavailable: {err}\n"),
        )
            .into_response(),
    }
}

/// Serves until the task is aborted. `render` produces the body for each scrape, or an error
/// message (answered with 500); `/readyz` answers from `readiness`.
pub async fn serve<F, Fut>(listener: TcpListener, readiness: Readiness, render: F)
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<String, String>> + Send + 'static,
{
    // axum retries failed accepts itself; returning at all means the listener is unusable.
    if let Err(err) = axum::serve(listener, router(readiness, render)).await {
        tracing::warn!(error = %err, "metrics: the /metrics server stopped");
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    use super::*;

    /// One request over a real connection, without `Connection: close`; the whole reply (the
    /// server closes after it).
    async fn request(addr: SocketAddr, head: &str) -> std::io::Result<String> {
        let mut client = TcpStream::connect(addr).await?;
        client
            .write_all(format!("{head}\r\nHost: x\r\n\r\n").as_bytes())
            .await?;
        let mut reply = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client.read_to_string(&mut reply),
        )
        .await
        .map_err(|_| std::io::Error::other("the server kept the connection open"))??;
        Ok(reply)
    }

    #[tokio::test]
    async fn answers_scrapes_failures_and_other_requests() -> std::io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let readiness = Readiness::new(&[]);
        let up = tokio::spawn(serve(listener, readiness, || async {
            Ok("up 1\n".to_string())
        }));

        let reply = request(addr, "GET /metrics HTTP/1.1").await?;
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        assert!(
            reply
                .to_ascii_lowercase()
                .contains(&format!("content-type: {CONTENT_TYPE}")),
            "{reply}"
        );
        assert!(reply.ends_with("\r\n\r\nup 1\n"), "{reply}");
        let reply = request(addr, "GET /metrics?x=1 HTTP/1.0").await?;
        assert!(reply.starts_with("HTTP/1.0 200 OK"), "{reply}");
        let reply = request(addr, "GET / HTTP/1.1").await?;
        assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
        let reply = request(addr, "POST /metrics HTTP/1.1").await?;
        assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
        up.abort();

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let down = tokio::spawn(serve(listener, Readiness::new(&[]), || async {
            Err("no status".to_string())
        }));
        let reply = request(addr, "GET /metrics HTTP/1.1").await?;
        assert!(reply.starts_with("HTTP/1.1 500"), "{reply}");
        assert!(
            reply.ends_with("metrics unavailable: no status\n"),
            "{reply}"
        );
        down.abort();
        Ok(())
    }

    #[tokio::test]
    async fn healthz_is_live_and_readyz_follows_readiness() -> std::io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let readiness = Readiness::new(&["ingester unreachable", "store unreachable"]);
        let server = tokio::spawn(serve(listener, readiness.clone(), || async {
            Ok(String::new())
        }));
        let ok =
            |reply: &str, body: &str| reply.starts_with("HTTP/1.1 200") && reply.ends_with(body);
        let refused = |reply: &str, body: &str| {
            reply.starts_with("HTTP/1.1 503 Service Unavailable") && reply.ends_with(body)
        };

        let reply = request(addr, "GET /healthz HTTP/1.1").await?;
        assert!(ok(&reply, "\r\n\r\nok\n"), "{reply}");
        let reply = request(addr, "GET /readyz HTTP/1.1").await?;
        assert!(
            refused(
                &reply,
                "\r\n\r\nnot ready: ingester unreachable, store unreachable\n"
            ),
            "{reply}"
        );
        readiness.set("ingester unreachable", true);
        let reply = request(addr, "GET /readyz HTTP/1.1").await?;
        assert!(refused(&reply, "not ready: store unreachable\n"), "{reply}");
        readiness.set("store unreachable", true);
        let reply = request(addr, "GET /readyz HTTP/1.1").await?;
        assert!(ok(&reply, "\r\n\r\nready\n"), "{reply}");
        // HEAD, as some load balancers probe.
        let reply = request(addr, "HEAD /readyz HTTP/1.1").await?;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

        readiness.stopping();
        let reply = request(addr, "GET /readyz HTTP/1.1").await?;
        assert!(refused(&reply, "not ready: shutting down\n"), "{reply}");
        let reply = request(addr, "GET /healthz HTTP/1.1").await?;
        assert!(ok(&reply, "ok\n"), "live while shutting down: {reply}");
        let reply = request(addr, "POST /readyz HTTP/1.1").await?;
        assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
        server.abort();
        Ok(())
    }

    #[tokio::test]
    async fn binds_only_when_set_and_names_the_key() -> std::io::Result<()> {
        assert!(matches!(bind(None).await, Ok(None)));
        let taken = TcpListener::bind("127.0.0.1:0").await?;
        let err = bind(Some(taken.local_addr()?))
            .await
            .expect_err("address in use");
        assert!(format!("{err:#}").starts_with("metrics_listen: binding 127.0.0.1:"));
        Ok(())
    }
}
