//! The `GET /metrics` endpoint both daemons serve.
//!
//! `proto` is otherwise free of IO; this is the one exception, because it is the only crate the
//! two daemons share (the design card allows no other) and the endpoint would else be written
//! twice. HTTP/1.1 with `Connection: close`: all a Prometheus scrape needs.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves until the task is aborted. `render` produces the body for each scrape, or an error
/// message (answered with 500).
pub async fn serve<F, Fut>(listener: TcpListener, render: F)
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<String, String>> + Send,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(err) => {
                tracing::warn!(error = %err, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            if let Err(err) = handle(stream, render).await {
                tracing::debug!(%peer, error = %err, "metrics: request failed");
            }
        });
    }
}

async fn handle<F, Fut>(mut stream: TcpStream, render: F) -> std::io::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<String, String>>,
{
    let Some(head) = read_head(&mut stream).await? else {
        return Ok(());
    };
    match route(&head) {
        Route::Metrics => match render().await {
            Ok(body) => respond(&mut stream, "200 OK", CONTENT_TYPE, &body).await,
            Err(err) => {
                let body = format!("metrics unavailable: {err}\n");
                respond(
                    &mut stream,
                    "500 Internal Server Error",
                    "text/plain",
                    &body,
                )
                .await
            }
        },
        Route::NotFound => {
            respond(&mut stream, "404 Not Found", "text/plain", "try /metrics\n").await
        }
        Route::BadMethod => {
            respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain",
                "GET only\n",
            )
            .await
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    BadMethod,
}

fn route(head: &str) -> Route {
    let mut parts = head.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return Route::BadMethod;
    }
    match target.split('?').next() {
        Some("/metrics") => Route::Metrics,
        _ => Route::NotFound,
    }
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let read = async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_HEAD {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
        std::io::Result::Ok(())
    };
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(result) => result?,
        Err(_) => return Ok(None),
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics
        );
        assert_eq!(route("GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route("GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route("POST /metrics HTTP/1.1\r\n\r\n"), Route::BadMethod);
        assert_eq!(route(""), Route::BadMethod);
    }

    #[tokio::test]
    async fn answers_a_scrape_and_a_failure() -> std::io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(serve(listener, || async { Ok("up 1\n".to_string()) }));
        let mut client = TcpStream::connect(addr).await?;
        client.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await?;
        let mut reply = String::new();
        client.read_to_string(&mut reply).await?;
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        assert!(reply.ends_with("up 1\n"), "{reply}");
        server.abort();
        Ok(())
    }
}
