//! A fault-injecting TCP proxy for HTTP services (the S3 server above all): put it between a
//! client and its server to count the bytes that really go over the wire and to break the
//! connection in controlled ways, instead of only killing the server.
//!
//! Modes ([`Mode`]), settable at any time with [`FaultProxy::set_mode`]:
//!
//! * `Pass` — forward both ways, byte for byte;
//! * `Refuse` — accept and close every new connection at once (the client sees a reset/EOF);
//! * `Http503` / `Http500` — read the request head, answer `503 Service Unavailable` /
//!   `500 Internal Server Error` with `Content-Length: 0` and `Connection: close`, forward nothing;
//! * `Delay(d)` — wait `d` before connecting upstream, then pass;
//! * `DropAfterBytes(n)` — pass, but cut each connection once `n` bytes went upstream on it.
//!
//! A mode applies to connections accepted after it is set; switching to any mode but `Pass` also
//! cuts the connections still open, so that clients with pooled keep-alive connections reconnect
//! and meet the new mode at once.
//!
//! Like the [`Relay`](super::relay::Relay) it runs on its own thread with its own runtime, so it
//! works from sync code and from any flavour of test runtime; dropping it closes everything.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Refuse,
    Http503,
    Http500,
    Delay(Duration),
    DropAfterBytes(u64),
}

/// Largest request head read before answering in the `Http5xx` modes.
const MAX_HEAD: usize = 64 * 1024;
/// How long the `Http5xx` modes wait for a request head / drain a request body.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Counters {
    to_upstream: AtomicU64,
    from_upstream: AtomicU64,
    connections: AtomicU64,
}

/// A running proxy; dropping it stops it and closes every connection.
pub struct FaultProxy {
    listen_addr: SocketAddr,
    upstream: SocketAddr,
    counters: Arc<Counters>,
    mode: Arc<Mutex<watch::Sender<Mode>>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of `upstream`, in `Mode::Pass`.
    pub fn start(upstream: SocketAddr) -> anyhow::Result<FaultProxy> {
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .context("fault proxy: binding a loopback port")?;
        std_listener
            .set_nonblocking(true)
            .context("fault proxy: making the listener non-blocking")?;
        let listen_addr = std_listener
            .local_addr()
            .context("fault proxy: reading the bound address")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("fault proxy: building its tokio runtime")?;
        let (mode_tx, mode_rx) = watch::channel(Mode::Pass);
        let counters = Arc::new(Counters::default());
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let loop_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", listen_addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(error) => {
                            tracing::error!(%error, "fault proxy: registering the listener failed");
                            return;
                        }
                    };
                    tokio::select! {
                        () = accept_loop(listener, upstream, mode_rx, loop_counters) => {}
                        _ = shutdown_rx => {}
                    }
                });
                drop(runtime);
            })
            .context("fault proxy: spawning its thread")?;
        Ok(FaultProxy {
            listen_addr,
            upstream,
            counters,
            mode: Arc::new(Mutex::new(mode_tx)),
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.listen_addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.listen_addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self
            .mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .borrow()
    }

    /// Bytes forwarded from clients to the upstream server.
    pub fn bytes_to_upstream(&self) -> u64 {
        self.counters.to_upstream.load(Ordering::Relaxed)
    }

    /// Bytes forwarded from the upstream server to clients.
    pub fn bytes_from_upstream(&self) -> u64 {
        self.counters.from_upstream.load(Ordering::Relaxed)
    }

    /// Connections accepted (in every mode).
    pub fn connections(&self) -> u64 {
        self.counters.connections.load(Ordering::Relaxed)
    }

    pub fn reset_counters(&self) {
        self.counters.to_upstream.store(0, Ordering::Relaxed);
        self.counters.from_upstream.store(0, Ordering::Relaxed);
        self.counters.connections.store(0, Ordering::Relaxed);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    counters: Arc<Counters>,
) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (client, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "fault proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let mut mode_rx = mode.clone();
        let current = *mode_rx.borrow_and_update();
        let counters = counters.clone();
        connections.spawn(async move {
            let result = match current {
                Mode::Refuse => {
                    drop(client);
                    Ok(())
                }
                Mode::Http503 => answer(client, "503 Service Unavailable").await,
                Mode::Http500 => answer(client, "500 Internal Server Error").await,
                Mode::Delay(d) => {
                    tokio::time::sleep(d).await;
                    pass(client, upstream, None, &counters, mode_rx).await
                }
                Mode::DropAfterBytes(n) => {
                    pass(client, upstream, Some(n), &counters, mode_rx).await
                }
                Mode::Pass => pass(client, upstream, None, &counters, mode_rx).await,
            };
            if let Err(error) = result {
                tracing::debug!(
                    error = format!("{error:#}"),
                    "fault proxy: connection ended"
                );
            }
        });
    }
}

/// Reads the request head, answers `status` without forwarding, and closes.
async fn answer(mut client: TcpStream, status: &str) -> anyhow::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 8192];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            let n = client.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(HEAD_TIMEOUT, read_head)
        .await
        .context("waiting for a request head")??;
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\nServer: fault-proxy\r\n\r\n"
    );
    client.write_all(response.as_bytes()).await?;
    client.flush().await?;
    let _ = client.shutdown().await;
    // Read (and drop) what the client still sends (a request body) for a moment, so it gets to
    // read the answer instead of a reset.
    let drain = async { while client.read(&mut buf).await.is_ok_and(|n| n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
    Ok(())
}

/// Forwards both ways, counting; stops after `limit` bytes upstream, or when the mode changes
/// to anything but `Pass`.
async fn pass(
    client: TcpStream,
    upstream: SocketAddr,
    limit: Option<u64>,
    counters: &Counters,
    mut mode: watch::Receiver<Mode>,
) -> anyhow::Result<()> {
    let server = TcpStream::connect(upstream)
        .await
        .with_context(|| format!("connecting to {upstream}"))?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();

    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        loop {
            let n = client_read.read(&mut buf).await?;
            if n == 0 {
                let _ = server_write.shutdown().await;
                // Keep the other direction going until the server is done.
                std::future::pending::<()>().await;
            }
            let allowed = match limit {
                Some(limit) => usize::try_from(limit.saturating_sub(sent))
                    .unwrap_or(usize::MAX)
                    .min(n),
                None => n,
            };
            counters
                .to_upstream
                .fetch_add(allowed as u64, Ordering::Relaxed);
            server_write.write_all(&buf[..allowed]).await?;
            sent += allowed as u64;
            if allowed < n || limit.is_some_and(|l| sent >= l) {
                anyhow::bail!("dropped after {sent} bytes upstream");
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = server_read.read(&mut buf).await?;
            if n == 0 {
                return anyhow::Ok(());
            }
            // Counted before forwarding, so a client that has read the bytes sees them counted.
            counters
                .from_upstream
                .fetch_add(n as u64, Ordering::Relaxed);
            client_write.write_all(&buf[..n]).await?;
        }
    };
    let cut = async {
        loop {
            if mode.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            if *mode.borrow_and_update() != Mode::Pass {
                return;
            }
        }
    };
    // Returning drops all four halves: both sockets close.
    tokio::select! {
        result = up => result,
        result = down => result,
        () = cut => anyhow::bail!("cut by a mode change"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers every request with `200 OK` and a 5-byte body.
    async fn tiny_http_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1 << 16];
                    let mut seen = Vec::new();
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            seen.clear();
                            let _ = socket
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                                .await;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn request(addr: SocketAddr, body: &[u8]) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        s.write_all(body).await?;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = [0u8; 1024];
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
                if out.ends_with(b"hello") {
                    break;
                }
            }
            std::io::Result::Ok(())
        })
        .await
        .map_err(|_| std::io::Error::other("timeout"))??;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    #[tokio::test]
    async fn modes_pass_refuse_answer_delay_and_drop() {
        let upstream = tiny_http_server().await;
        let proxy = FaultProxy::start(upstream).expect("proxy");
        let reply = request(proxy.addr(), b"").await.expect("pass");
        assert!(
            reply.starts_with("HTTP/1.1 200") && reply.ends_with("hello"),
            "{reply}"
        );
        assert!(proxy.bytes_to_upstream() > 20);
        assert_eq!(proxy.bytes_from_upstream() as usize, reply.len());
        assert_eq!(proxy.connections(), 1);

        proxy.set_mode(Mode::Http503);
        let before = proxy.bytes_to_upstream();
        let reply = request(proxy.addr(), b"").await.expect("answered");
        assert!(
            reply.starts_with("HTTP/1.1 503 Service Unavailable"),
            "{reply}"
        );
        assert!(reply.contains("Content-Length: 0"), "{reply}");
        assert_eq!(proxy.bytes_to_upstream(), before, "nothing forwarded");
        proxy.set_mode(Mode::Http500);
        let reply = request(proxy.addr(), b"").await.expect("answered");
        assert!(reply.starts_with("HTTP/1.1 500"), "{reply}");

        proxy.set_mode(Mode::Refuse);
        let reply = request(proxy.addr(), b"").await.unwrap_or_default();
        assert!(reply.is_empty(), "{reply}");

        proxy.set_mode(Mode::Delay(Duration::from_millis(300)));
        let started = std::time::Instant::now();
        let reply = request(proxy.addr(), b"").await.expect("delayed pass");
        assert!(reply.ends_with("hello"));
        assert!(started.elapsed() >= Duration::from_millis(300));

        proxy.set_mode(Mode::DropAfterBytes(10));
        proxy.reset_counters();
        let reply = request(proxy.addr(), b"").await.unwrap_or_default();
        assert!(reply.is_empty(), "cut before the head was through: {reply}");
        assert_eq!(proxy.bytes_to_upstream(), 10);
        assert_eq!(proxy.connections(), 1);
    }
}
