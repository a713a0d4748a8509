//! A Pulsar producer that sends each message with the sequence id it is given, under a fixed
//! producer name: what makes a restore idempotent on a broker with deduplication enabled (Apache
//! Pulsar's `brokerDeduplicationEnabled`, TDMQ): the broker drops a message whose sequence id is
//! not above the last one it persisted from that producer name.
//!
//! Why not pulsar-rs: 6.9.1 numbers a producer's messages itself, from 0 at every connection,
//! and neither takes a sequence id per message nor reads the broker's `last_sequence_id`
//! (docs/dependencies.md). A resumed restore would then send position N as sequence id 0, which a
//! deduplicating broker drops as already seen. So this speaks the few commands producing takes
//! (connect, lookup, partitioned metadata, producer, send, ping) on the binary protocol itself,
//! with pulsar-rs's own generated protocol types.
//!
//! Messages go as batch entries, as a Java or pulsar-rs producer sends them: one SEND carries up
//! to [`BATCH_MAX_MESSAGES`] messages, each with its own single-message metadata (its sequence id,
//! key, ordering key, properties, event time), and the SEND's `sequence_id` and
//! `highest_sequence_id` are the batch's first and last position, which is what a deduplicating
//! broker compares. One entry per batch rather than per message is most of restore's speed.
//!
//! One producer, one connection, one task: [`SequencedProducer::send`] keeps up to
//! [`MAX_IN_FLIGHT`] batches unconfirmed, reads the broker's receipts (answering its pings
//! meanwhile) and returns once every batch is confirmed. Any failure ends the producer and says
//! how far the broker confirmed; the caller makes a new one, which sends what was not confirmed.
//!
//! `pulsar+ssl://` targets are reached over TLS with what the rules' consumers trust
//! ([`PulsarTrust`]: the public roots, plus `pulsar_ca_file`), the broker's name verified, and
//! the token sent inside the TLS session.

use std::sync::Arc;
use std::time::Duration;

use prost013::Message as _;
use pulsar::message::proto::{
    base_command::Type, command_lookup_topic_response::LookupType, BaseCommand, CommandConnect,
    CommandLookupTopic, CommandPartitionedTopicMetadata, CommandPong, CommandProducer, CommandSend,
    KeyValue, MessageMetadata, SingleMessageMetadata,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use proto::types::Secret;

use crate::source::trust::PulsarTrust;

/// Far above a Pulsar frame (5 MB messages by default): a larger size is a broken stream.
const MAX_FRAME: usize = 64 << 20;
/// How long the broker may take to answer a command or confirm a batch.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Redirects followed on one lookup before giving up.
const MAX_REDIRECTS: usize = 8;
const MAGIC_CRC32C: [u8; 2] = [0x0e, 0x01];
/// A batch entry holds at most this many messages and about this many payload bytes: the Java
/// client's defaults (`batchingMaxMessages`, `batchingMaxBytes`), far below the broker's 5 MB.
const BATCH_MAX_MESSAGES: usize = 1000;
const BATCH_MAX_BYTES: usize = 128 * 1024;
/// Batches written before the oldest of them is confirmed: the second hides the round trip of
/// the first, and a failure leaves at most these unconfirmed.
pub const MAX_IN_FLIGHT: usize = 2;
/// The version pulsar-rs speaks; every command used here is older.
const PROTOCOL_VERSION: i32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("service URL {0:?} is not pulsar://HOST:PORT or pulsar+ssl://HOST:PORT")]
    Url(String),
    #[error("TLS to {addr}: {detail}")]
    Tls { addr: String, detail: String },
    #[error("the broker has no pulsar+ssl:// URL for {0} (its lookup answered only a plain one)")]
    NoTlsUrl(String),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connection to the broker: {0}")]
    Io(#[from] std::io::Error),
    #[error("the broker did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the broker refused {what}: {message}")]
    Refused { what: &'static str, message: String },
    #[error("unexpected reply from the broker: {0}")]
    Protocol(String),
}

type Result<T> = std::result::Result<T, ProduceError>;

/// One message to produce, as restore puts it back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutMessage {
    pub sequence_id: u64,
    pub payload: Vec<u8>,
    pub key: Option<String>,
    pub key_base64: bool,
    pub ordering_key: Option<Vec<u8>>,
    pub properties: Vec<(String, String)>,
    pub event_time_ms: Option<u64>,
}

/// Where a connection goes: `host:port`, and whether over TLS (`pulsar+ssl://`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    host: String,
    port: u16,
    tls: bool,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Endpoint> {
        let bad = || ProduceError::Url(url.to_string());
        let (rest, tls) = match url.strip_prefix("pulsar+ssl://") {
            Some(rest) => (rest, true),
            None => (url.strip_prefix("pulsar://").ok_or_else(bad)?, false),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || host.contains('/') || port == 0 {
            return Err(bad());
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
            tls,
        })
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// What every connection of one target shares: the service URL it starts from, the token and,
/// for `pulsar+ssl://`, the TLS client configuration.
struct Dialer<'a> {
    service: Endpoint,
    token: Option<&'a Secret>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl<'a> Dialer<'a> {
    fn new(service_url: &str, token: Option<&'a Secret>, trust: &PulsarTrust) -> Result<Self> {
        let service = Endpoint::parse(service_url)?;
        let tls = if service.tls {
            Some(trust.client_config().map_err(|e| ProduceError::Tls {
                addr: service.addr(),
                detail: e.to_string(),
            })?)
        } else {
            None
        };
        Ok(Dialer {
            service,
            token,
            tls,
        })
    }

    /// The broker URL of a lookup answer for this target's scheme: a `pulsar+ssl://` target
    /// goes on over TLS or not at all (as pulsar-rs's lookup does).
    fn broker_of(
        &self,
        plain: Option<String>,
        tls: Option<String>,
        topic: &str,
    ) -> Result<Endpoint> {
        let url = if self.service.tls {
            tls.ok_or_else(|| ProduceError::NoTlsUrl(topic.to_string()))?
        } else {
            plain.ok_or_else(|| ProduceError::Protocol("a lookup without a broker URL".into()))?
        };
        Endpoint::parse(&url)
    }

    async fn open(&self, to: &Endpoint, proxy_to: Option<&Endpoint>) -> Result<Conn> {
        let addr = to.addr();
        let tcp = tokio::time::timeout(REPLY_TIMEOUT, TcpStream::connect(&addr))
            .await
            .map_err(|_| ProduceError::Timeout(REPLY_TIMEOUT))?
            .map_err(|source| ProduceError::Connect {
                addr: addr.clone(),
                source,
            })?;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Stream> = match &self.tls {
            None => Box::new(tcp),
            Some(config) => {
                let tls_err = |detail: String| ProduceError::Tls {
                    addr: addr.clone(),
                    detail,
                };
                let name = rustls::pki_types::ServerName::try_from(to.host.clone())
                    .map_err(|e| tls_err(e.to_string()))?;
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls = tokio::time::timeout(REPLY_TIMEOUT, connector.connect(name, tcp))
                    .await
                    .map_err(|_| ProduceError::Timeout(REPLY_TIMEOUT))?
                    // The handshake's own words: an unknown issuer, a name not in the
                    // certificate, a broker that does not speak TLS.
                    .map_err(|e| tls_err(e.to_string()))?;
                Box::new(tls)
            }
        };
        Conn::handshake(stream, self.token, proxy_to.map(Endpoint::addr)).await
    }
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// A connected, handshaken connection.
struct Conn {
    stream: BufWriter<Box<dyn Stream>>,
    next_request: u64,
}

impl Conn {
    async fn handshake(
        stream: Box<dyn Stream>,
        token: Option<&Secret>,
        proxy_to: Option<String>,
    ) -> Result<Conn> {
        let mut conn = Conn {
            stream: BufWriter::new(stream),
            next_request: 0,
        };
        let connect = CommandConnect {
            client_version: format!("tdmq-backup-restore/{}", env!("CARGO_PKG_VERSION")),
            protocol_version: Some(PROTOCOL_VERSION),
            auth_method_name: token.map(|_| "token".to_string()),
            auth_data: token.map(|t| t.expose().as_bytes().to_vec()),
            proxy_to_broker_url: proxy_to,
            ..Default::default()
        };
        conn.write_command(BaseCommand {
            r#type: Type::Connect as i32,
            connect: Some(connect),
            ..Default::default()
        })
        .await?;
        conn.stream.flush().await?;
        loop {
            let reply = conn.read_reply().await?;
            match reply.r#type() {
                Type::Connected => return Ok(conn),
                // The token itself is never in an error: only the broker's message.
                Type::Error => {
                    return Err(refused("the connection", reply.error.map(|e| e.message)))
                }
                _ => continue,
            }
        }
    }

    fn request_id(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    async fn write_command(&mut self, command: BaseCommand) -> Result<()> {
        let body = command.encode_to_vec();
        let len = u32::try_from(body.len()).map_err(|_| ProduceError::Protocol("size".into()))?;
        self.stream.write_all(&(len + 4).to_be_bytes()).await?;
        self.stream.write_all(&len.to_be_bytes()).await?;
        self.stream.write_all(&body).await?;
        Ok(())
    }

    /// A SEND frame: command, then magic + CRC32C of (metadata size, metadata, payload).
    async fn write_send(
        &mut self,
        command: BaseCommand,
        meta: &MessageMetadata,
        payload: &[u8],
    ) -> Result<()> {
        let cmd = command.encode_to_vec();
        let meta = meta.encode_to_vec();
        let meta_len =
            u32::try_from(meta.len()).map_err(|_| ProduceError::Protocol("size".into()))?;
        let mut checked = Vec::with_capacity(4 + meta.len() + payload.len());
        checked.extend_from_slice(&meta_len.to_be_bytes());
        checked.extend_from_slice(&meta);
        checked.extend_from_slice(payload);
        let total = 4 + cmd.len() + 2 + 4 + checked.len();
        let total = u32::try_from(total).map_err(|_| ProduceError::Protocol("size".into()))?;
        self.stream.write_all(&total.to_be_bytes()).await?;
        self.stream
            .write_all(&(cmd.len() as u32).to_be_bytes())
            .await?;
        self.stream.write_all(&cmd).await?;
        self.stream.write_all(&MAGIC_CRC32C).await?;
        self.stream
            .write_all(&crc32c::crc32c(&checked).to_be_bytes())
            .await?;
        self.stream.write_all(&checked).await?;
        Ok(())
    }

    /// The next command from the broker; pings are answered here and not returned.
    async fn read_reply(&mut self) -> Result<BaseCommand> {
        loop {
            let command = tokio::time::timeout(REPLY_TIMEOUT, self.read_frame())
                .await
                .map_err(|_| ProduceError::Timeout(REPLY_TIMEOUT))??;
            if command.r#type() == Type::Ping {
                self.write_command(BaseCommand {
                    r#type: Type::Pong as i32,
                    pong: Some(CommandPong {}),
                    ..Default::default()
                })
                .await?;
                self.stream.flush().await?;
                continue;
            }
            return Ok(command);
        }
    }

    async fn read_frame(&mut self) -> Result<BaseCommand> {
        let stream = self.stream.get_mut();
        let total = stream.read_u32().await? as usize;
        if !(4..=MAX_FRAME).contains(&total) {
            return Err(ProduceError::Protocol(format!("a frame of {total} bytes")));
        }
        let mut frame = vec![0; total];
        stream.read_exact(&mut frame).await?;
        let cmd_len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        let cmd = frame
            .get(4..4 + cmd_len)
            .ok_or_else(|| ProduceError::Protocol("command cut short".into()))?;
        BaseCommand::decode(cmd).map_err(|e| ProduceError::Protocol(e.to_string()))
    }

    /// Sends a request and waits for the reply carrying the same request id.
    async fn request(&mut self, command: BaseCommand, id: u64) -> Result<BaseCommand> {
        self.write_command(command).await?;
        self.stream.flush().await?;
        loop {
            let reply = self.read_reply().await?;
            if request_id_of(&reply) == Some(id) {
                return Ok(reply);
            }
        }
    }
}

fn refused(what: &'static str, message: Option<String>) -> ProduceError {
    ProduceError::Refused {
        what,
        message: message.unwrap_or_default(),
    }
}

fn request_id_of(c: &BaseCommand) -> Option<u64> {
    c.lookup_topic_response
        .as_ref()
        .map(|r| r.request_id)
        .or_else(|| c.partition_metadata_response.as_ref().map(|r| r.request_id))
        .or_else(|| c.producer_success.as_ref().map(|r| r.request_id))
        .or_else(|| c.error.as_ref().map(|r| r.request_id))
        .or_else(|| c.success.as_ref().map(|r| r.request_id))
}

/// How many partitions `topic` has (0: not partitioned).
pub async fn partitions(
    service_url: &str,
    token: Option<&Secret>,
    trust: &PulsarTrust,
    topic: &str,
) -> Result<u32> {
    let dialer = Dialer::new(service_url, token, trust)?;
    let mut conn = dialer.open(&dialer.service, None).await?;
    let id = conn.request_id();
    let reply = conn
        .request(
            BaseCommand {
                r#type: Type::PartitionedMetadata as i32,
                partition_metadata: Some(CommandPartitionedTopicMetadata {
                    topic: topic.to_string(),
                    request_id: id,
                    ..Default::default()
                }),
                ..Default::default()
            },
            id,
        )
        .await?;
    let r = {
        let kind = reply.r#type();
        reply
            .partition_metadata_response
            .ok_or_else(|| ProduceError::Protocol(format!("{kind:?} to a metadata request")))?
    };
    if r.error.is_some() {
        return Err(refused("the partition lookup", r.message));
    }
    Ok(r.partitions.unwrap_or(0))
}

/// The connection to the broker that owns `topic` (one partition or a plain topic).
async fn connect_owner(dialer: &Dialer<'_>, topic: &str) -> Result<Conn> {
    let service = &dialer.service;
    let mut conn = dialer.open(service, None).await?;
    let mut authoritative = false;
    for _ in 0..MAX_REDIRECTS {
        let id = conn.request_id();
        let reply = conn
            .request(
                BaseCommand {
                    r#type: Type::Lookup as i32,
                    lookup_topic: Some(CommandLookupTopic {
                        topic: topic.to_string(),
                        request_id: id,
                        authoritative: Some(authoritative),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                id,
            )
            .await?;
        let r = {
            let kind = reply.r#type();
            reply
                .lookup_topic_response
                .ok_or_else(|| ProduceError::Protocol(format!("{kind:?} to a lookup")))?
        };
        let response = r.response();
        if response == LookupType::Failed {
            return Err(refused("the topic lookup", r.message));
        }
        let broker = dialer.broker_of(r.broker_service_url, r.broker_service_url_tls, topic)?;
        let proxied = r.proxy_through_service_url.unwrap_or(false);
        match response {
            LookupType::Failed => unreachable!("answered above"),
            LookupType::Redirect => {
                authoritative = r.authoritative.unwrap_or(false);
                conn = if proxied {
                    dialer.open(service, Some(&broker)).await?
                } else {
                    dialer.open(&broker, None).await?
                };
            }
            LookupType::Connect => {
                if proxied {
                    return dialer.open(service, Some(&broker)).await;
                }
                // Already on the owner: keep this connection.
                if broker.addr() == service.addr() {
                    return Ok(conn);
                }
                return dialer.open(&broker, None).await;
            }
        }
    }
    Err(ProduceError::Protocol(format!(
        "more than {MAX_REDIRECTS} lookup redirects for {topic}"
    )))
}

/// A producer registered under a fixed name on one plain topic or one partition.
pub struct SequencedProducer {
    conn: Conn,
    producer_id: u64,
    name: String,
    last_sequence_id: Option<u64>,
}

impl SequencedProducer {
    pub async fn create(
        service_url: &str,
        token: Option<&Secret>,
        trust: &PulsarTrust,
        topic: &str,
        name: &str,
    ) -> Result<SequencedProducer> {
        let dialer = Dialer::new(service_url, token, trust)?;
        let mut conn = connect_owner(&dialer, topic).await?;
        let id = conn.request_id();
        let producer_id = 1;
        let reply = conn
            .request(
                BaseCommand {
                    r#type: Type::Producer as i32,
                    producer: Some(CommandProducer {
                        topic: topic.to_string(),
                        producer_id,
                        request_id: id,
                        producer_name: Some(name.to_string()),
                        // The name is ours, not the broker's choice: dedup state is per name.
                        user_provided_producer_name: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                id,
            )
            .await?;
        if let Some(err) = reply.error {
            return Err(refused("the producer", Some(err.message)));
        }
        let ok = {
            let kind = reply.r#type();
            reply
                .producer_success
                .ok_or_else(|| ProduceError::Protocol(format!("{kind:?} to a producer")))?
        };
        Ok(SequencedProducer {
            conn,
            producer_id,
            name: ok.producer_name,
            last_sequence_id: ok.last_sequence_id.and_then(|s| u64::try_from(s).ok()),
        })
    }

    /// The highest sequence id the broker has persisted from this producer name, when it keeps
    /// track (deduplication enabled); `None` otherwise.
    pub fn last_sequence_id(&self) -> Option<u64> {
        self.last_sequence_id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `messages` (sequence ids increasing) as batch entries, at most [`MAX_IN_FLIGHT`]
    /// of them unconfirmed at a time, and returns once the broker confirmed every one. On an
    /// error, `confirmed` says how far the broker got: the highest sequence id of the batches it
    /// confirmed (the caller need not send those again).
    pub async fn send(&mut self, messages: &[OutMessage]) -> std::result::Result<(), SendFailed> {
        let mut confirmed = None;
        self.send_batches(messages, &mut confirmed)
            .await
            .map_err(|error| SendFailed { error, confirmed })
    }

    async fn send_batches(
        &mut self,
        messages: &[OutMessage],
        confirmed: &mut Option<u64>,
    ) -> Result<()> {
        let batches = cut_batches(messages, BATCH_MAX_MESSAGES, BATCH_MAX_BYTES);
        let mut next = 0;
        // (first, last) sequence id of each batch written and not yet confirmed, oldest first.
        let mut in_flight: std::collections::VecDeque<(u64, u64)> = Default::default();
        while next < batches.len() || !in_flight.is_empty() {
            if next < batches.len() && in_flight.len() < MAX_IN_FLIGHT {
                while next < batches.len() && in_flight.len() < MAX_IN_FLIGHT {
                    let batch = batches[next];
                    self.write_batch(batch).await?;
                    if let (Some(first), Some(last)) = (batch.first(), batch.last()) {
                        in_flight.push_back((first.sequence_id, last.sequence_id));
                    }
                    next += 1;
                }
                self.conn.stream.flush().await?;
            }
            let reply = self.conn.read_reply().await?;
            match reply.r#type() {
                Type::SendReceipt => {
                    // The broker echoes the SEND's sequence id: the batch's first. Receipts come
                    // in order; one for no batch in flight (a stale one) is ignored.
                    let Some(r) = reply.send_receipt else {
                        continue;
                    };
                    if let Some(i) = in_flight.iter().position(|(f, _)| *f == r.sequence_id) {
                        if let Some((_, last)) = in_flight.remove(i) {
                            *confirmed = Some(confirmed.map_or(last, |c| c.max(last)));
                        }
                    }
                }
                Type::SendError => {
                    let message = reply.send_error.map(|e| e.message);
                    return Err(refused("a message", message));
                }
                Type::CloseProducer => {
                    return Err(refused("the producer", Some("closed by the broker".into())))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// One SEND: a lone message as itself, several as one batch entry whose single-message
    /// metadata keep each message's sequence id, key, ordering key, properties and event time.
    async fn write_batch(&mut self, batch: &[OutMessage]) -> Result<()> {
        let Some(parts) = send_parts(batch, self.producer_id, &self.name)? else {
            return Ok(());
        };
        let command = BaseCommand {
            r#type: Type::Send as i32,
            send: Some(parts.send),
            ..Default::default()
        };
        self.conn
            .write_send(command, &parts.meta, &parts.payload)
            .await
    }
}

/// One SEND as it goes on the wire: the command, the entry's metadata and its payload.
struct SendParts<'a> {
    send: CommandSend,
    meta: MessageMetadata,
    payload: std::borrow::Cow<'a, [u8]>,
}

/// The SEND of `batch` (None when it is empty).
fn send_parts<'a>(
    batch: &'a [OutMessage],
    producer_id: u64,
    producer_name: &str,
) -> Result<Option<SendParts<'a>>> {
    let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
        return Ok(None);
    };
    let mut meta = MessageMetadata {
        producer_name: producer_name.to_string(),
        sequence_id: first.sequence_id,
        publish_time: proto::types::time::now_millis(),
        ..Default::default()
    };
    let mut send = CommandSend {
        producer_id,
        sequence_id: first.sequence_id,
        num_messages: Some(1),
        ..Default::default()
    };
    if let [m] = batch {
        meta.properties = key_values(&m.properties);
        meta.partition_key = m.key.clone();
        meta.partition_key_b64_encoded = m.key_base64.then_some(true);
        meta.ordering_key = m.ordering_key.clone();
        meta.event_time = m.event_time_ms;
        let payload = std::borrow::Cow::Borrowed(&m.payload[..]);
        return Ok(Some(SendParts {
            send,
            meta,
            payload,
        }));
    }
    let n = i32::try_from(batch.len()).map_err(|_| ProduceError::Protocol("batch size".into()))?;
    let payload = encode_batch(batch)?;
    meta.num_messages_in_batch = Some(n);
    // What a deduplicating broker records for the entry: it drops a batch whose highest
    // sequence id it has already persisted from this producer name.
    meta.highest_sequence_id = Some(last.sequence_id);
    meta.uncompressed_size = u32::try_from(payload.len()).ok();
    // The broker routes an entry to a Key_Shared consumer by the entry's key: when all messages
    // of the batch share one, the entry carries it too (as the Java client's key-based batching
    // does); a batch of mixed keys goes by no key.
    if batch
        .iter()
        .all(|m| m.key == first.key && m.key_base64 == first.key_base64)
    {
        meta.partition_key = first.key.clone();
        meta.partition_key_b64_encoded = first.key_base64.then_some(true);
    }
    if batch.iter().all(|m| m.ordering_key == first.ordering_key) {
        meta.ordering_key = first.ordering_key.clone();
    }
    send.num_messages = Some(n);
    send.highest_sequence_id = Some(last.sequence_id);
    Ok(Some(SendParts {
        send,
        meta,
        payload: std::borrow::Cow::Owned(payload),
    }))
}

/// A [`SequencedProducer::send`] that failed, and how far the broker had confirmed.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct SendFailed {
    pub error: ProduceError,
    /// The highest sequence id of the batches the broker confirmed before the failure.
    pub confirmed: Option<u64>,
}

fn key_values(properties: &[(String, String)]) -> Vec<KeyValue> {
    properties
        .iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

/// Splits `messages` in order into batches of at most `max_messages` and about `max_bytes` of
/// payload (a message larger than that is a batch by itself).
fn cut_batches(
    messages: &[OutMessage],
    max_messages: usize,
    max_bytes: usize,
) -> Vec<&[OutMessage]> {
    let mut batches = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, m) in messages.iter().enumerate() {
        let full = i - start >= max_messages || (i > start && bytes + m.payload.len() > max_bytes);
        if full {
            batches.push(&messages[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += m.payload.len();
    }
    if start < messages.len() {
        batches.push(&messages[start..]);
    }
    batches
}

/// A batch entry's payload: for each message, the size of its single-message metadata (u32,
/// big endian), that metadata, then its payload.
fn encode_batch(batch: &[OutMessage]) -> Result<Vec<u8>> {
    let size: usize = batch.iter().map(|m| m.payload.len() + 64).sum();
    let mut out = Vec::with_capacity(size);
    for m in batch {
        let single = SingleMessageMetadata {
            properties: key_values(&m.properties),
            partition_key: m.key.clone(),
            partition_key_b64_encoded: m.key_base64.then_some(true),
            ordering_key: m.ordering_key.clone(),
            event_time: m.event_time_ms,
            sequence_id: Some(m.sequence_id),
            payload_size: i32::try_from(m.payload.len())
                .map_err(|_| ProduceError::Protocol("payload size".into()))?,
            ..Default::default()
        };
        let encoded = single.encode_to_vec();
        out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        out.extend_from_slice(&encoded);
        out.extend_from_slice(&m.payload);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
