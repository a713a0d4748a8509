//! A `pulsar+ssl://` front for pulsar-lite, which speaks plain TCP only: it ends TLS with a test
//! certificate (for `localhost` and 127.0.0.1, see [`crate::TestCerts`]) and passes the bytes on
//! to the broker, as a TLS-terminating proxy or load balancer in front of a cluster does.
//!
//! One change to what the broker says: pulsar-lite's lookup answers name only its plain URL, and
//! a client on `pulsar+ssl://` goes on to the broker's TLS URL (pulsar-rs and Java alike), so the
//! front adds its own URL as `broker_service_url_tls` to every lookup answer. Everything else
//! passes byte for byte. It runs on the caller's tokio runtime; dropping it closes everything.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::BytesMut;
use pulsar::message::proto::BaseCommand;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use crate::services::relay::take_frame;
use crate::TestCerts;

pub struct PulsarTlsFront {
    addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl PulsarTlsFront {
    /// Listens on a free loopback port in front of `broker`.
    pub async fn start(broker: SocketAddr, certs: &TestCerts) -> anyhow::Result<PulsarTlsFront> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![certs.cert_der.clone().into()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(certs.key_der.clone().into()),
            )
            .context("the test certificate")?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let url = format!("pulsar+ssl://localhost:{}", addr.port());
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let (acceptor, url) = (acceptor.clone(), url.clone());
                connections.spawn(async move {
                    if let Err(error) = serve(client, acceptor, broker, &url).await {
                        tracing::debug!(%error, "pulsar TLS front: connection ended");
                    }
                });
            }
        });
        Ok(PulsarTlsFront { addr, tasks })
    }

    /// `pulsar+ssl://localhost:PORT`: the name the test certificate holds.
    pub fn url(&self) -> String {
        format!("pulsar+ssl://localhost:{}", self.addr.port())
    }
}

impl Drop for PulsarTlsFront {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

async fn serve(
    client: TcpStream,
    acceptor: TlsAcceptor,
    broker: SocketAddr,
    url: &str,
) -> anyhow::Result<()> {
    let tls = acceptor.accept(client).await.context("TLS handshake")?;
    let upstream = TcpStream::connect(broker)
        .await
        .context("dialing the broker")?;
    let (mut client_read, mut client_write) = tokio::io::split(tls);
    let (mut broker_read, mut broker_write) = upstream.into_split();
    let to_broker = async {
        tokio::io::copy(&mut client_read, &mut broker_write).await?;
        broker_write.shutdown().await
    };
    let to_client = async {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            while let Some(frame) = take_frame(&mut buf).map_err(std::io::Error::other)? {
                client_write
                    .write_all(&with_tls_lookup(&frame, url))
                    .await?;
            }
            if broker_read.read_buf(&mut buf).await? == 0 {
                return client_write.shutdown().await;
            }
        }
    };
    tokio::try_join!(to_broker, to_client)?;
    Ok(())
}

/// The frame, with `url` as the TLS broker URL if it is a lookup answer naming a broker.
fn with_tls_lookup(frame: &[u8], url: &str) -> Vec<u8> {
    use prost013::Message as _;
    let rewritten = (|| {
        let cmd_size = u32::from_be_bytes(frame.get(4..8)?.try_into().ok()?) as usize;
        let cmd = frame.get(8..8 + cmd_size)?;
        if frame.len() != 8 + cmd_size {
            return None; // a frame with a payload is no lookup answer
        }
        let mut command = BaseCommand::decode(cmd).ok()?;
        let lookup = command.lookup_topic_response.as_mut()?;
        lookup.broker_service_url.as_ref()?;
        lookup.broker_service_url_tls = Some(url.to_string());
        let cmd = command.encode_to_vec();
        let mut out = Vec::with_capacity(8 + cmd.len());
        out.extend_from_slice(&(cmd.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(&(cmd.len() as u32).to_be_bytes());
        out.extend_from_slice(&cmd);
        Some(out)
    })();
    rewritten.unwrap_or_else(|| frame.to_vec())
}
