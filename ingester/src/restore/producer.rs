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
//! One producer, one connection, one task: [`SequencedProducer::send`] writes a batch and reads
//! until every message of it is confirmed (answering the broker's pings meanwhile). Any failure
//! ends the producer; the caller makes a new one, which sends again what was not confirmed.
//! Plain `pulsar://` only (no TLS yet).

use std::time::Duration;

use prost013::Message as _;
use pulsar::message::proto::{
    base_command::Type, command_lookup_topic_response::LookupType, BaseCommand, CommandConnect,
    CommandLookupTopic, CommandPartitionedTopicMetadata, CommandPong, CommandProducer, CommandSend,
    KeyValue, MessageMetadata,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;

use proto::types::Secret;

/// Far above a Pulsar frame (5 MB messages by default): a larger size is a broken stream.
const MAX_FRAME: usize = 64 << 20;
/// How long the broker may take to answer a command or confirm a batch.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Redirects followed on one lookup before giving up.
const MAX_REDIRECTS: usize = 8;
const MAGIC_CRC32C: [u8; 2] = [0x0e, 0x01];
/// The version pulsar-rs speaks; every command used here is older.
const PROTOCOL_VERSION: i32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error(
        "service URL {0:?} is not pulsar://HOST:PORT (pulsar+ssl is not supported by restore yet)"
    )]
    Url(String),
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

/// `pulsar://host:port` → `host:port`.
fn address(url: &str) -> Result<String> {
    let rest = url
        .strip_prefix("pulsar://")
        .ok_or_else(|| ProduceError::Url(url.to_string()))?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || !rest.contains(':') {
        return Err(ProduceError::Url(url.to_string()));
    }
    Ok(rest.to_string())
}

/// A connected, handshaken connection.
struct Conn {
    stream: BufWriter<TcpStream>,
    next_request: u64,
}

impl Conn {
    async fn open(addr: &str, token: Option<&Secret>, proxy_to: Option<String>) -> Result<Conn> {
        let tcp = tokio::time::timeout(REPLY_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ProduceError::Timeout(REPLY_TIMEOUT))?
            .map_err(|source| ProduceError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        tcp.set_nodelay(true)?;
        let mut conn = Conn {
            stream: BufWriter::new(tcp),
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
pub async fn partitions(service_url: &str, token: Option<&Secret>, topic: &str) -> Result<u32> {
    let mut conn = Conn::open(&address(service_url)?, token, None).await?;
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
async fn connect_owner(service_url: &str, token: Option<&Secret>, topic: &str) -> Result<Conn> {
    let service = address(service_url)?;
    let mut conn = Conn::open(&service, token, None).await?;
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
        let broker = r.broker_service_url.clone().unwrap_or_default();
        match r.response() {
            LookupType::Failed => return Err(refused("the topic lookup", r.message)),
            LookupType::Redirect => {
                authoritative = r.authoritative.unwrap_or(false);
                conn = if r.proxy_through_service_url.unwrap_or(false) {
                    Conn::open(&service, token, Some(broker)).await?
                } else {
                    Conn::open(&address(&broker)?, token, None).await?
                };
            }
            LookupType::Connect => {
                if r.proxy_through_service_url.unwrap_or(false) {
                    return Conn::open(&service, token, Some(broker)).await;
                }
                let owner = address(&broker)?;
                // Already on the owner: keep this connection.
                if owner == service {
                    return Ok(conn);
                }
                return Conn::open(&owner, token, None).await;
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
        topic: &str,
        name: &str,
    ) -> Result<SequencedProducer> {
        let mut conn = connect_owner(service_url, token, topic).await?;
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

    /// Sends `messages` and returns once the broker confirmed every one of them.
    pub async fn send(&mut self, messages: &[OutMessage]) -> Result<()> {
        let mut pending: std::collections::HashSet<u64> = std::collections::HashSet::new();
        for m in messages {
            let command = BaseCommand {
                r#type: Type::Send as i32,
                send: Some(CommandSend {
                    producer_id: self.producer_id,
                    sequence_id: m.sequence_id,
                    num_messages: Some(1),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let meta = MessageMetadata {
                producer_name: self.name.clone(),
                sequence_id: m.sequence_id,
                publish_time: proto::types::time::now_millis(),
                properties: m
                    .properties
                    .iter()
                    .map(|(k, v)| KeyValue {
                        key: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
                partition_key: m.key.clone(),
                partition_key_b64_encoded: m.key_base64.then_some(true),
                ordering_key: m.ordering_key.clone(),
                event_time: m.event_time_ms,
                ..Default::default()
            };
            self.conn.write_send(command, &meta, &m.payload).await?;
            pending.insert(m.sequence_id);
        }
        self.conn.stream.flush().await?;
        while !pending.is_empty() {
            let reply = self.conn.read_reply().await?;
            match reply.r#type() {
                Type::SendReceipt => {
                    if let Some(r) = reply.send_receipt {
                        pending.remove(&r.sequence_id);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_pulsar_urls() {
        assert_eq!(address("pulsar://h:6650").ok().as_deref(), Some("h:6650"));
        assert_eq!(address("pulsar://h:6650/").ok().as_deref(), Some("h:6650"));
        for bad in [
            "pulsar+ssl://h:6651",
            "http://h:80",
            "pulsar://h",
            "pulsar://",
        ] {
            assert!(matches!(address(bad), Err(ProduceError::Url(_))), "{bad}");
        }
    }
}
