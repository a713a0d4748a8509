//! One plain HTTP/1.1 `GET` over TCP, for the daemons' metrics port (`/metrics`, `/healthz`,
//! `/readyz`), which closes the connection after each answer: no HTTP client crate needed.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A reply's status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub body: String,
}

/// `GET path` from `addr`; fails if nothing answers within 10 s or the answer is not HTTP.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<HttpReply> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .with_context(|| format!("GET {path} from {addr}: no answer in 10 s"))??;
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        bail!("GET {path}: not an HTTP response: {response}");
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .with_context(|| format!("GET {path}: no status code in {head:?}"))?;
    Ok(HttpReply {
        status,
        body: body.to_string(),
    })
}

/// `GET /metrics` from `addr`: the body, or an error unless it answered 200.
pub async fn metrics(addr: SocketAddr) -> anyhow::Result<String> {
    let reply = get(addr, "/metrics").await?;
    if reply.status != 200 {
        bail!(
            "GET /metrics from {addr} answered {}: {}",
            reply.status,
            reply.body
        );
    }
    Ok(reply.body)
}

/// The value of the sample `series` (name plus labels, exactly as exposed) in a scrape's body.
pub fn sample(body: &str, series: &str) -> anyhow::Result<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .with_context(|| format!("no {series} in:\n{body}"))?
        .trim()
        .parse::<f64>()
        .with_context(|| format!("{series} is not a number"))
}
