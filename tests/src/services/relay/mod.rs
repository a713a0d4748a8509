//! A TCP relay between Pulsar clients and pulsar-lite that makes its frames readable by pulsar-rs.
//!
//! pulsar-lite omits the optional `0x0e01` + CRC32C block in MESSAGE frames; pulsar-rs 6.9.1
//! always expects it and drops the connection (docs/dependencies.md §2). The product stays on the
//! unmodified crate (real brokers keep the producer's checksum), so the tests put this relay in
//! front of pulsar-lite instead. It changes frames from the broker to the client only:
//!
//! * a frame that carries a payload without the magic gets `0x0e01` + CRC32C (big endian) of the
//!   payload inserted in front of it, and its `total` size grows by 6;
//! * a `LookupTopicResponse` gets its broker URLs replaced by the relay's own URL, otherwise the
//!   client would look the topic up and then connect to the broker directly, bypassing the relay.
//!
//! Frames from the client to the broker pass through byte for byte, except CommandFlow: pulsar-lite
//! counts flow permits per entry where an Apache Pulsar broker counts them per message, so the
//! relay keeps the client's message permits and grants pulsar-lite entries the way an Apache
//! broker reads them ([`flow`]; [`FlowAccounting::Passthrough`] turns that off).
//!
//! For tests of entries a client cannot decode, a relay started with [`Faults`] also damages the
//! compressed payload of chosen MESSAGE frames (metadata kept, checksum computed over the damaged
//! bytes, as a corrupt entry in a real ledger would arrive). With [`FaultPlan::annotate`] it also
//! turns messages into chunks of a larger message or into end-to-end-encrypted ones, as a Java
//! producer would send them: pulsar-rs can produce neither, so a message asks for the metadata it
//! should arrive with in a property ([`CHUNK_PROPERTY`], [`ENCRYPTION_PROPERTY`]), which the relay
//! moves into the entry's metadata (payload untouched).
//!
//! When the broker goes away the relay closes the client's connection, so the client notices and
//! reconnects; the relay keeps accepting and dials the broker afresh for every new connection, so a
//! broker restarted on the same port is picked up without restarting the relay. While the broker
//! is down, new client connections are held open rather than closed (see [`dial_broker`]: pulsar-rs
//! gives up for good on a connection closed during its handshake).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Buf, BytesMut};
use pulsar::message::proto::{BaseCommand, EncryptionKeys, KeyValue, MessageMetadata};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

mod flow;
use flow::ConnectionFlow;
pub use flow::FlowAccounting;

/// The magic number that starts the optional checksum block of a payload frame.
const MAGIC_CRC32C: [u8; 2] = [0x0e, 0x01];

/// Largest frame the relay accepts from the broker. The brief asks for 10 MiB; pulsar-lite's
/// default `max_message_size_bytes` is 5 MiB, so this leaves room for batch overhead and
/// larger configured limits while still refusing garbage sizes from a corrupt stream.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// How long one attempt to connect to the broker may take.
const BROKER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between attempts to reach a broker that is down (see [`dial_broker`]).
const BROKER_RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// How long a client is held while the broker is down before the relay closes it; longer than
/// any client connection timeout, so clients normally time out (and retry) first.
const BROKER_HOLD_LIMIT: Duration = Duration::from_secs(120);

/// A running relay. Dropping it stops the accept loop and closes every relayed connection.
pub struct Relay {
    listen_addr: SocketAddr,
    broker_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Starts a relay on a free loopback port in front of `broker_addr`.
    pub fn start(broker_addr: SocketAddr) -> anyhow::Result<Relay> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), broker_addr)
    }

    /// Starts a relay listening on `listen` in front of `broker_addr`.
    ///
    /// The relay runs on its own thread with its own single-threaded tokio runtime: it works from
    /// synchronous code, it does not depend on the flavour of the caller's runtime, and dropping
    /// that runtime is what tears down every connection task at once.
    pub fn start_on(listen: SocketAddr, broker_addr: SocketAddr) -> anyhow::Result<Relay> {
        Self::start_with(listen, broker_addr, None, FlowAccounting::default())
    }

    /// Starts a relay on a free loopback port that also damages entries as `faults` says.
    pub fn start_with_faults(
        broker_addr: SocketAddr,
        faults: Arc<Faults>,
    ) -> anyhow::Result<Relay> {
        Self::start_with(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            broker_addr,
            Some(faults),
            FlowAccounting::default(),
        )
    }

    /// Starts a relay listening on `listen` that passes flow permits on as `accounting` says.
    pub fn start_with_accounting(
        listen: SocketAddr,
        broker_addr: SocketAddr,
        accounting: FlowAccounting,
    ) -> anyhow::Result<Relay> {
        Self::start_with(listen, broker_addr, None, accounting)
    }

    fn start_with(
        listen: SocketAddr,
        broker_addr: SocketAddr,
        faults: Option<Arc<Faults>>,
        accounting: FlowAccounting,
    ) -> anyhow::Result<Relay> {
        let std_listener = std::net::TcpListener::bind(listen)
            .with_context(|| format!("relay: binding {listen}"))?;
        std_listener
            .set_nonblocking(true)
            .context("relay: making the listener non-blocking")?;
        let listen_addr = std_listener
            .local_addr()
            .context("relay: reading the bound address")?;
        let relay_url = format!("pulsar://{listen_addr}");

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("relay: building its tokio runtime")?;
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("relay-{}", listen_addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(listener) => listener,
                        Err(error) => {
                            tracing::error!(%error, "relay: registering the listener failed");
                            return;
                        }
                    };
                    tokio::select! {
                        () = accept_loop(listener, broker_addr, relay_url, faults, accounting) => {}
                        _ = shutdown_rx => {}
                    }
                });
                // Dropping the runtime here cancels every connection task and closes its sockets.
                drop(runtime);
            })
            .context("relay: spawning its thread")?;
        tracing::debug!(%listen_addr, %broker_addr, "relay started");
        Ok(Relay {
            listen_addr,
            broker_addr,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }

    /// The URL clients should use: `pulsar://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("pulsar://{}", self.listen_addr)
    }

    /// The address the relay listens on.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// The broker the relay forwards to.
    pub fn broker_addr(&self) -> SocketAddr {
        self.broker_addr
    }

    /// Whether the relay's thread has stopped on its own (it only does if its listener could not
    /// be registered); the `tdmq-backup-relay` binary polls this while waiting for a signal.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts clients forever; every client gets its own task (owned by a `JoinSet`, so dropping the
/// loop aborts them all).
async fn accept_loop(
    listener: TcpListener,
    broker_addr: SocketAddr,
    relay_url: String,
    faults: Option<Arc<Faults>>,
    accounting: FlowAccounting,
) {
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Transient (e.g. EMFILE); back off a little rather than spin.
                tracing::warn!(%error, "relay: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let relay_url = relay_url.clone();
        let faults = faults.clone();
        connections.spawn(async move {
            if let Err(error) = relay_connection(
                client,
                broker_addr,
                &relay_url,
                faults.as_deref(),
                accounting,
            )
            .await
            {
                tracing::debug!(%peer, error = format!("{error:#}"), "relay: connection ended");
            }
        });
    }
}

/// Relays one client connection until either side closes or fails, then closes both.
async fn relay_connection(
    mut client: TcpStream,
    broker_addr: SocketAddr,
    relay_url: &str,
    faults: Option<&Faults>,
    accounting: FlowAccounting,
) -> anyhow::Result<()> {
    let (mut broker, early_bytes) = dial_broker(&mut client, broker_addr).await?;
    broker
        .write_all(&early_bytes)
        .await
        .context("forwarding the client's first bytes")?;
    let _ = client.set_nodelay(true);
    let _ = broker.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut broker_read, mut broker_write) = broker.into_split();

    // Flow permits counted per message (see `flow`): the client's CommandFlow frames stop here
    // and the relay sends pulsar-lite its own, from either direction's task, through `grants`.
    let flow = Mutex::new(ConnectionFlow::default());
    let (grants_tx, mut grants_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let upstream = async {
        if accounting == FlowAccounting::Passthrough {
            tokio::io::copy(&mut client_read, &mut broker_write)
                .await
                .context("client to broker")?;
            return anyhow::Ok(());
        }
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            tokio::select! {
                Some(grant) = grants_rx.recv() => {
                    broker_write.write_all(&grant).await.context("writing to broker")?;
                }
                read = client_read.read_buf(&mut buf) => {
                    if read.context("reading from client")? == 0 {
                        return anyhow::Ok(());
                    }
                    while let Some(frame) = take_frame(&mut buf)? {
                        let mut grants = Vec::new();
                        let forward = flow
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .on_client_frame(&frame, |consumer, entries| grants.push(flow::flow_frame(consumer, entries)));
                        if forward {
                            broker_write.write_all(&frame).await.context("writing to broker")?;
                        }
                        for grant in grants {
                            broker_write.write_all(&grant).await.context("writing to broker")?;
                        }
                    }
                }
            }
        }
    };
    let downstream = async {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            while let Some(frame) = take_frame(&mut buf)? {
                let changed = faults.and_then(|f| f.apply(&frame));
                let out = rewrite_frame(changed.as_deref().unwrap_or(&frame), relay_url)?;
                client_write
                    .write_all(&out)
                    .await
                    .context("writing to client")?;
                if accounting == FlowAccounting::PerMessage {
                    let grant = flow
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .on_broker_frame(&frame);
                    if let Some((consumer, entries)) = grant {
                        // The upstream task ends (and drops the receiver) only with the connection.
                        let _ = grants_tx.send(flow::flow_frame(consumer, entries));
                    }
                }
            }
            let n = broker_read
                .read_buf(&mut buf)
                .await
                .context("reading from broker")?;
            if n == 0 {
                if buf.is_empty() {
                    return anyhow::Ok(());
                }
                bail!("broker closed the connection mid-frame");
            }
        }
    };
    // Whichever direction ends first ends the connection: returning drops all four halves, so the
    // client sees its socket closed (and reconnects) when the broker dies, and vice versa.
    tokio::select! {
        result = upstream => result,
        result = downstream => result,
    }
}

/// Connects to the broker for a new client, holding the client while the broker is unreachable.
///
/// Closing the client straight away would be wrong: pulsar-rs treats a connection that closes
/// during its handshake as fatal ("connection error, not retryable: [Disconnected]") and the
/// consumer's stream ends, whereas a dead real broker refuses connections, which pulsar-rs
/// retries. Holding the socket (without answering) makes the client hit its own connection
/// timeout, which it also retries; and if the broker comes back first, the client's buffered
/// CONNECT goes through late, just like a slow broker. Bytes the client sends meanwhile are
/// returned so they can be forwarded once connected.
async fn dial_broker(
    client: &mut TcpStream,
    broker_addr: SocketAddr,
) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let give_up = tokio::time::Instant::now() + BROKER_HOLD_LIMIT;
    let mut early_bytes = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(BROKER_CONNECT_TIMEOUT, TcpStream::connect(broker_addr)).await {
            Ok(Ok(broker)) => return Ok((broker, early_bytes)),
            Ok(Err(error)) => tracing::trace!(%error, "relay: broker unreachable, holding client"),
            Err(_elapsed) => tracing::trace!("relay: broker connect timed out, holding client"),
        }
        if tokio::time::Instant::now() >= give_up {
            bail!("broker {broker_addr} unreachable for {BROKER_HOLD_LIMIT:?}");
        }
        // Wait before the next attempt, but notice a client that gives up (read is cancel-safe).
        match tokio::time::timeout(BROKER_RETRY_INTERVAL, client.read(&mut chunk)).await {
            Err(_elapsed) => {}
            Ok(Ok(0)) => bail!("client left while broker {broker_addr} was unreachable"),
            Ok(Ok(n)) => {
                early_bytes.extend_from_slice(&chunk[..n]);
                if early_bytes.len() > MAX_FRAME_BYTES {
                    bail!("client sent too much while broker {broker_addr} was unreachable");
                }
            }
            Ok(Err(error)) => return Err(error).context("reading from the held client"),
        }
    }
}

/// Which MESSAGE frames a relay damages, by the order in which their entries first pass it
/// (0 = the first entry the relay relays, counted across connections and redeliveries).
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// Entries damaged at their first delivery only: a redelivery decodes.
    pub damage_once: Vec<usize>,
    /// An entry damaged at every delivery: it can never be decoded.
    pub damage_always: Option<usize>,
    /// Partitions the relay hides from every partitioned topic's count in the broker's answers:
    /// clients see the last ones only once this is set back to 0, as if an operator had grown
    /// the topics then (pulsar-lite fixes a topic's count when it creates it, has no admin API
    /// to change it, and refuses a partition beyond the count).
    pub hidden_partitions: Arc<AtomicU32>,
    /// Rewrite the metadata of messages that carry [`CHUNK_PROPERTY`] or [`ENCRYPTION_PROPERTY`]
    /// (at every delivery, so a redelivery arrives the same).
    pub annotate: bool,
}

/// Property of a non-batched message asking the relay (with [`FaultPlan::annotate`]) to deliver it
/// as a chunk: `{"uuid":…,"chunk_id":…,"num_chunks":…,"total_size":…}` becomes the metadata's
/// `uuid`, `chunk_id`, `num_chunks_from_msg` and `total_chunk_msg_size` (a member left out or
/// `null` stays unset). The property itself is removed.
pub const CHUNK_PROPERTY: &str = "x-relay-chunk";

/// Like [`CHUNK_PROPERTY`], for end-to-end encryption:
/// `{"keys":[{"name":…,"value":"<base64>","metadata":{…}}],"algorithm":…,"param":"<base64>"}`
/// becomes `encryption_keys`, `encryption_algo` and `encryption_param`.
pub const ENCRYPTION_PROPERTY: &str = "x-relay-encryption";

/// An entry as the relay saw it: ledger, entry and the partition the broker named (-1: none).
pub type EntryKey = (u64, u64, i32);

/// An entry the relay damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DamagedEntry {
    pub key: EntryKey,
    /// Deliveries of it that were damaged.
    pub times: u32,
    /// Messages in it (a batch entry holds several).
    pub messages: u32,
}

/// A [`FaultPlan`] and what the relay did under it; shared by the relay's connections.
#[derive(Debug, Default)]
pub struct Faults {
    plan: FaultPlan,
    state: Mutex<FaultState>,
}

#[derive(Debug, Default)]
struct FaultState {
    /// Distinct entries in order of first delivery.
    order: HashMap<EntryKey, usize>,
    /// Damaged entries.
    damaged: HashMap<EntryKey, DamagedEntry>,
    /// Deliveries per entry (all entries).
    deliveries: HashMap<EntryKey, u32>,
    /// Deliveries whose metadata the relay annotated, per entry.
    annotated: HashMap<EntryKey, u32>,
}

impl Faults {
    pub fn new(plan: FaultPlan) -> Arc<Faults> {
        Arc::new(Faults {
            plan,
            state: Mutex::new(FaultState::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries damaged so far.
    pub fn damaged(&self) -> Vec<DamagedEntry> {
        let mut out: Vec<_> = self.state().damaged.values().copied().collect();
        out.sort();
        out
    }

    /// How many times the relay delivered `entry`.
    pub fn deliveries(&self, entry: EntryKey) -> u32 {
        self.state().deliveries.get(&entry).copied().unwrap_or(0)
    }

    /// `frame` with fewer partitions if it answers a partitioned topic's metadata lookup and the
    /// plan hides partitions.
    fn hide_partitions(&self, frame: &[u8]) -> Option<Vec<u8>> {
        use prost013::Message as _;
        let hidden = self.plan.hidden_partitions.load(Ordering::SeqCst);
        let cmd_size = u32::from_be_bytes(frame.get(4..8)?.try_into().ok()?) as usize;
        if hidden == 0 || frame.len() != 8 + cmd_size {
            return None;
        }
        let mut command = BaseCommand::decode(frame.get(8..)?).ok()?;
        let answer = command.partition_metadata_response.as_mut()?;
        let partitions = answer.partitions.filter(|n| *n > hidden)?;
        answer.partitions = Some(partitions - hidden);
        let cmd = command.encode_to_vec();
        let mut out = Vec::with_capacity(8 + cmd.len());
        out.extend_from_slice(&u32_be(4 + cmd.len()).ok()?);
        out.extend_from_slice(&u32_be(cmd.len()).ok()?);
        out.extend_from_slice(&cmd);
        Some(out)
    }

    /// Entries whose metadata the relay annotated (at least once), sorted.
    pub fn annotated(&self) -> Vec<EntryKey> {
        let mut out: Vec<_> = self.state().annotated.keys().copied().collect();
        out.sort();
        out
    }

    /// What the relay sends for `frame`: damaged or annotated as the plan says, `None` when it
    /// passes unchanged.
    fn apply(&self, frame: &[u8]) -> Option<Vec<u8>> {
        let damaged = self.damage(frame).or_else(|| self.hide_partitions(frame));
        if !self.plan.annotate {
            return damaged;
        }
        let current = damaged.as_deref().unwrap_or(frame);
        let (key, payload_at) = message_entry(current)?;
        match annotate_metadata(current, payload_at) {
            Ok(Some(annotated)) => {
                *self.state().annotated.entry(key).or_insert(0) += 1;
                Some(annotated)
            }
            Ok(None) => damaged,
            Err(error) => {
                // A test's malformed request: relay the message as it is, the test's own
                // assertions on the stored metadata then fail with this in the log.
                tracing::error!(
                    error = format!("{error:#}"),
                    "relay: cannot annotate a message"
                );
                damaged
            }
        }
    }

    /// The damaged copy of `frame` if it is a MESSAGE frame the plan damages now.
    fn damage(&self, frame: &[u8]) -> Option<Vec<u8>> {
        let (key, payload_at) = message_entry(frame)?;
        let mut state = self.state();
        *state.deliveries.entry(key).or_insert(0) += 1;
        let next = state.order.len();
        let ordinal = *state.order.entry(key).or_insert(next);
        let first = !state.damaged.contains_key(&key);
        let wanted = self.plan.damage_always == Some(ordinal)
            || (first && self.plan.damage_once.contains(&ordinal));
        if !wanted {
            return None;
        }
        let (damaged, messages) = damage_compressed_payload(frame, payload_at)?;
        state
            .damaged
            .entry(key)
            .or_insert(DamagedEntry {
                key,
                times: 0,
                messages,
            })
            .times += 1;
        Some(damaged)
    }
}

/// The entry a MESSAGE frame carries and where its payload starts; `None` for other frames.
fn message_entry(frame: &[u8]) -> Option<(EntryKey, usize)> {
    use prost013::Message as _;
    let cmd_size = u32::from_be_bytes(frame.get(4..8)?.try_into().ok()?) as usize;
    let payload_at = 8 + cmd_size;
    if frame.len() <= payload_at {
        return None;
    }
    let command = BaseCommand::decode(frame.get(8..payload_at)?).ok()?;
    let id = command.message?.message_id;
    Some((
        (id.ledger_id, id.entry_id, id.partition.unwrap_or(-1)),
        payload_at,
    ))
}

/// The frame with its message's metadata rewritten as its [`CHUNK_PROPERTY`] and
/// [`ENCRYPTION_PROPERTY`] ask; `None` if it asks for neither. The data after the metadata is
/// kept byte for byte; sizes and a checksum block already present are made to match.
fn annotate_metadata(frame: &[u8], payload_at: usize) -> anyhow::Result<Option<Vec<u8>>> {
    use prost013::Message as _;
    let mut at = payload_at;
    let checksummed = frame.get(at..at + 2) == Some(&MAGIC_CRC32C[..]);
    if checksummed {
        at += 6;
    }
    let meta_size = frame
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .context("no metadata size")? as usize;
    let meta_bytes = frame
        .get(at + 4..at + 4 + meta_size)
        .context("metadata cut short")?;
    let mut meta = MessageMetadata::decode(meta_bytes).context("metadata does not decode")?;
    let mut chunk = None;
    let mut encryption = None;
    meta.properties.retain(|kv| match kv.key.as_str() {
        CHUNK_PROPERTY => {
            chunk = Some(kv.value.clone());
            false
        }
        ENCRYPTION_PROPERTY => {
            encryption = Some(kv.value.clone());
            false
        }
        _ => true,
    });
    if chunk.is_none() && encryption.is_none() {
        return Ok(None);
    }
    if let Some(chunk) = chunk {
        let chunk: serde_json::Value =
            serde_json::from_str(&chunk).context("the chunk property is not JSON")?;
        let int = |name: &str| -> anyhow::Result<Option<i32>> {
            match &chunk[name] {
                serde_json::Value::Null => Ok(None),
                v => Ok(Some(
                    v.as_i64()
                        .and_then(|n| i32::try_from(n).ok())
                        .with_context(|| format!("chunk {name} {v} is not an i32"))?,
                )),
            }
        };
        meta.uuid = chunk["uuid"].as_str().map(str::to_owned);
        meta.chunk_id = int("chunk_id")?;
        meta.num_chunks_from_msg = int("num_chunks")?;
        meta.total_chunk_msg_size = int("total_size")?;
    }
    if let Some(encryption) = encryption {
        use base64::Engine as _;
        let b64 = |v: &serde_json::Value| -> anyhow::Result<Vec<u8>> {
            let text = v.as_str().with_context(|| format!("{v} is not a string"))?;
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .with_context(|| format!("{text:?} is not base64"))
        };
        let encryption: serde_json::Value =
            serde_json::from_str(&encryption).context("the encryption property is not JSON")?;
        let mut keys = Vec::new();
        for key in encryption["keys"].as_array().into_iter().flatten() {
            let metadata = key["metadata"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    Ok(KeyValue {
                        key: k.clone(),
                        value: v.as_str().context("key metadata value")?.to_owned(),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            keys.push(EncryptionKeys {
                key: key["name"].as_str().context("key name")?.to_owned(),
                value: b64(&key["value"])?,
                metadata,
            });
        }
        meta.encryption_keys = keys;
        meta.encryption_algo = encryption["algorithm"].as_str().map(str::to_owned);
        meta.encryption_param = match &encryption["param"] {
            serde_json::Value::Null => None,
            v => Some(b64(v)?),
        };
    }
    let meta = meta.encode_to_vec();
    let data = frame.get(at + 4 + meta_size..).context("no data")?;
    // The command's size and the command, as they came.
    let command = frame.get(4..payload_at).context("no command")?;
    let mut payload = Vec::with_capacity(4 + meta.len() + data.len());
    payload.extend_from_slice(&u32_be(meta.len())?);
    payload.extend_from_slice(&meta);
    payload.extend_from_slice(data);
    let checksum_len = if checksummed { 6 } else { 0 };
    let mut out = Vec::with_capacity(4 + command.len() + checksum_len + payload.len());
    out.extend_from_slice(&u32_be(command.len() + checksum_len + payload.len())?);
    out.extend_from_slice(command);
    if checksummed {
        // Keep a real broker's checksum block truthful about the new metadata.
        out.extend_from_slice(&MAGIC_CRC32C);
        out.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
    }
    out.extend_from_slice(&payload);
    Ok(Some(out))
}

/// Inverts every byte of a compressed entry's data after its metadata, so that decompression
/// fails; also returns how many messages the entry holds. `None` for a frame whose payload is
/// not compressed (it is relayed as it came).
fn damage_compressed_payload(frame: &[u8], payload_at: usize) -> Option<(Vec<u8>, u32)> {
    use prost013::Message as _;
    let mut at = payload_at;
    // A payload may already carry the checksum block (real brokers): skip it.
    if frame.get(at..at + 2) == Some(&MAGIC_CRC32C[..]) {
        at += 6;
    }
    let meta_size = u32::from_be_bytes(frame.get(at..at + 4)?.try_into().ok()?) as usize;
    let meta = MessageMetadata::decode(frame.get(at + 4..at + 4 + meta_size)?).ok()?;
    if meta.compression.unwrap_or(0) == 0 {
        return None;
    }
    let messages = u32::try_from(meta.num_messages_in_batch.unwrap_or(1)).unwrap_or(1);
    let data_at = at + 4 + meta_size;
    let mut out = frame.to_vec();
    for byte in out.get_mut(data_at..)? {
        *byte = !*byte;
    }
    if at != payload_at {
        // Keep a real broker's checksum block truthful about the damaged bytes.
        let crc = crc32c::crc32c(&out[payload_at + 6..]);
        out[payload_at + 2..payload_at + 6].copy_from_slice(&crc.to_be_bytes());
    }
    Some((out, messages))
}

/// Removes one complete frame (including its 4-byte `total` prefix) from the front of `buf`, or
/// returns `None` if more bytes are needed.
pub fn take_frame(buf: &mut BytesMut) -> anyhow::Result<Option<BytesMut>> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let total = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if total > MAX_FRAME_BYTES {
        bail!("frame of {total} bytes exceeds the relay's limit of {MAX_FRAME_BYTES}");
    }
    if buf.len() < 4 + total {
        buf.reserve(4 + total - buf.len());
        return Ok(None);
    }
    Ok(Some(buf.split_to(4 + total)))
}

/// Rewrites one whole broker-to-client frame `[total][cmd_size][cmd][payload]` (see the module
/// doc). Frames that need no change are returned as they came.
pub fn rewrite_frame(frame: &[u8], relay_url: &str) -> anyhow::Result<Vec<u8>> {
    if frame.len() < 8 {
        bail!("frame of {} bytes is too short", frame.len());
    }
    let total = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    if total + 4 != frame.len() {
        bail!(
            "frame says total={total} but holds {} bytes after the size",
            frame.len() - 4
        );
    }
    let cmd_size = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize;
    if 4 + cmd_size > total {
        bail!("command size {cmd_size} exceeds frame total {total}");
    }
    let cmd = &frame[8..8 + cmd_size];
    let payload = &frame[8 + cmd_size..];

    // Only frames without a payload can be lookup responses; MESSAGE frames are left undecoded,
    // which keeps the hot path cheap.
    let new_cmd = if payload.is_empty() {
        rewrite_lookup(cmd, relay_url)
    } else {
        None
    };
    let needs_checksum = !payload.is_empty() && !payload.starts_with(&MAGIC_CRC32C);
    if new_cmd.is_none() && !needs_checksum {
        return Ok(frame.to_vec());
    }

    let cmd = new_cmd.as_deref().unwrap_or(cmd);
    let checksum_len = if needs_checksum { 6 } else { 0 };
    let new_total = 4 + cmd.len() + checksum_len + payload.len();
    let mut out = Vec::with_capacity(4 + new_total);
    out.extend_from_slice(&u32_be(new_total)?);
    out.extend_from_slice(&u32_be(cmd.len())?);
    out.extend_from_slice(cmd);
    if needs_checksum {
        out.extend_from_slice(&MAGIC_CRC32C);
        out.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    }
    out.extend_from_slice(payload);
    Ok(out)
}

/// Returns the re-encoded command if it is a lookup response naming a broker URL.
fn rewrite_lookup(cmd: &[u8], relay_url: &str) -> Option<Vec<u8>> {
    use prost013::Message as _;
    let mut command = BaseCommand::decode(cmd).ok()?;
    let lookup = command.lookup_topic_response.as_mut()?;
    // No broker URL (e.g. a failed lookup): nothing to point at the relay.
    lookup.broker_service_url.as_ref()?;
    lookup.broker_service_url = Some(relay_url.to_owned());
    if lookup.broker_service_url_tls.is_some() {
        lookup.broker_service_url_tls = Some(relay_url.to_owned());
    }
    Some(command.encode_to_vec())
}

fn u32_be(n: usize) -> anyhow::Result<[u8; 4]> {
    Ok(u32::try_from(n)
        .with_context(|| format!("frame size {n} does not fit in u32"))?
        .to_be_bytes())
}

/// Reads a frame's `total` field; for tests and diagnostics.
pub fn frame_total(frame: &[u8]) -> Option<u32> {
    let mut head = frame.get(..4)?;
    Some(head.get_u32())
}

#[cfg(test)]
mod tests;
