//! Chunked and end-to-end-encrypted messages. pulsar-rs 6.9 neither reassembles chunks nor
//! decrypts, so the backup stores each chunk as a record of its own and an encrypted payload as
//! its ciphertext; the records keep the metadata that reassembling and decrypting need (`chunk`,
//! `encryption`), and plain records stay as they were.
//!
//! pulsar-rs cannot produce such messages either: the relay gives them their metadata on the way
//! to the ingester (`FaultPlan::annotate`, asked for by a property of each message).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use base64::Engine as _;
use harness::relay::{CHUNK_PROPERTY, ENCRYPTION_PROPERTY};
use harness::{
    check_exactly_once, produce, produce_zlib, read_all, sample_messages, FaultPlan, Faults,
    PulsarLite, SampleMessage,
};
use serde_json::{json, Value};

use crate::util::{eventually, unique_topic, Stack, BUCKET};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Deterministic bytes that look like ciphertext (and are not UTF-8: they start with 0xff).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = vec![0xff];
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(x as u8);
    }
    out
}

/// What a message is sent as, and what its record must hold besides the payload.
struct Sent {
    message: SampleMessage,
    /// The record's `chunk` and `encryption` members (`None`: the member must be absent).
    chunk: Option<Value>,
    encryption: Option<Value>,
}

/// A plain message: no chunk, no encryption.
fn plain(message: SampleMessage) -> Sent {
    Sent {
        message,
        chunk: None,
        encryption: None,
    }
}

/// The `encryption` member a record must carry (the shape the relay reads, too).
fn encryption(seed: u64, algorithm: Option<&str>, two_keys: bool) -> Value {
    let mut keys = vec![json!({
        "name": format!("app-key-{seed}"),
        "value": b64(&noise(seed, 256)),
        "metadata": {"version": "3", "note": "quote \" and ünïcødé"},
    })];
    if two_keys {
        keys.push(json!({
            "name": "backup-reader-key",
            "value": b64(&noise(seed + 1, 128)),
            "metadata": {},
        }));
    }
    json!({
        "keys": keys,
        "algorithm": algorithm,
        "param": b64(&noise(seed + 2, 12)),
    })
}

/// `whole` cut into `num_chunks` fragments of nearly equal size, as a producer chunks a message
/// larger than its broker's limit (`uuid` is the producer's name and the sequence id).
fn chunks_of(whole: &[u8], uuid: &str, num_chunks: usize, encrypted: Option<&Value>) -> Vec<Sent> {
    let size = whole.len().div_ceil(num_chunks);
    whole
        .chunks(size)
        .enumerate()
        .map(|(chunk_id, fragment)| {
            let chunk = json!({
                "uuid": uuid,
                "chunk_id": chunk_id,
                "num_chunks": num_chunks,
                "total_size": whole.len(),
            });
            let mut properties = BTreeMap::new();
            properties.insert(CHUNK_PROPERTY.to_string(), chunk.to_string());
            if let Some(encryption) = encrypted {
                properties.insert(ENCRYPTION_PROPERTY.to_string(), encryption.to_string());
            }
            Sent {
                message: SampleMessage {
                    payload: fragment.to_vec(),
                    key: None,
                    properties,
                    event_time: None,
                    ..Default::default()
                },
                chunk: Some(chunk),
                encryption: encrypted.cloned(),
            }
        })
        .collect()
}

fn encrypted(ciphertext: Vec<u8>, key: Option<&str>, encryption: Value) -> Sent {
    let mut properties = BTreeMap::new();
    properties.insert("app".to_string(), "kept".to_string());
    properties.insert(ENCRYPTION_PROPERTY.to_string(), encryption.to_string());
    Sent {
        message: SampleMessage {
            payload: ciphertext,
            key: key.map(str::to_owned),
            properties,
            event_time: Some(1_700_000_123_456),
            ..Default::default()
        },
        chunk: None,
        encryption: Some(encryption),
    }
}

/// The message as the backup must show it: without the property that asked the relay for
/// metadata (the relay removes it, as a real producer would never have sent it).
fn as_stored(message: &SampleMessage) -> SampleMessage {
    let mut message = message.clone();
    message.properties.remove(CHUNK_PROPERTY);
    message.properties.remove(ENCRYPTION_PROPERTY);
    message
}

async fn stack_annotating() -> anyhow::Result<(Stack, std::sync::Arc<Faults>)> {
    let faults = Faults::new(FaultPlan {
        annotate: true,
        ..FaultPlan::default()
    });
    let pulsar = PulsarLite::start_with_faults(0, faults.clone()).await?;
    let stack = Stack::builder().pulsar(pulsar).start().await?;
    Ok((stack, faults))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_and_encrypted_payloads_keep_what_recovers_them() -> anyhow::Result<()> {
    let (stack, faults) = stack_annotating().await?;
    let rule = "chunks";
    let topic = unique_topic("chunks");
    let full_topic = format!("persistent://public/default/{topic}");

    // A text whose chunk boundaries cut multi-byte characters (its fragments are not UTF-8,
    // the whole is), a binary one, an ASCII one, and an encrypted one in chunks.
    // Numbered pieces: no two fragments are equal (the oracle matches records by payload).
    let text: Vec<u8> = (0..12)
        .map(|i| format!("chunked message {i} Ω: 你好, wörld — "))
        .collect::<String>()
        .into_bytes();
    let binary = noise(7, 300);
    let ascii: Vec<u8> = (0..9)
        .map(|i| format!("plain ascii chunked message, piece {i}. "))
        .collect::<String>()
        .into_bytes();
    let secret_chunks = noise(11, 90);
    let secret_encryption = encryption(40, None, false);
    let logical: Vec<(String, Vec<u8>)> = vec![
        ("sample-producer-1001".into(), text.clone()),
        ("sample-producer-1002".into(), binary.clone()),
        ("sample-producer-1003".into(), ascii.clone()),
        ("sample-producer-1004".into(), secret_chunks.clone()),
    ];
    let plain_messages = sample_messages(40, 31);
    let mut plain_iter = plain_messages.into_iter().map(plain);
    let mut sent: Vec<Sent> = Vec::new();
    sent.extend(plain_iter.by_ref().take(5));
    sent.extend(chunks_of(&text, &logical[0].0, 3, None));
    sent.extend(plain_iter.by_ref().take(5));
    sent.push(encrypted(
        noise(20, 64),
        Some("k-enc"),
        encryption(20, Some("RSA/ECB/OAEPWithSHA-256AndMGF1Padding"), true),
    ));
    sent.extend(chunks_of(&binary, &logical[1].0, 2, None));
    sent.extend(plain_iter.by_ref().take(10));
    // Ciphertext that happens to be UTF-8 is stored as text, like any payload.
    sent.push(encrypted(
        b"ciphertext that is UTF-8".to_vec(),
        None,
        encryption(30, Some("ECIES"), false),
    ));
    sent.extend(chunks_of(&ascii, &logical[2].0, 4, None));
    sent.extend(chunks_of(
        &secret_chunks,
        &logical[3].0,
        2,
        Some(&secret_encryption),
    ));
    sent.extend(plain_iter);
    let messages: Vec<SampleMessage> = sent.iter().map(|s| s.message.clone()).collect();
    let annotated = sent
        .iter()
        .filter(|s| s.chunk.is_some() || s.encryption.is_some())
        .count();

    // Not batched (chunks never are) and not compressed: what pulsar-rs hands over is the
    // entry's data as the producer sent it.
    produce(&stack.pulsar.url(), &full_topic, &messages, false).await?;
    // Small objects, so the chunks of one message land in different objects.
    stack.create_rule(rule, &topic, &["--window", "1s", "--max-messages", "7"])?;
    let objects = stack
        .wait_until_stored(rule, &messages, Duration::from_secs(90))
        .await?;
    assert_eq!(
        faults.annotated().len(),
        annotated,
        "the relay gave every chunk and encrypted message its metadata"
    );
    let stored: Vec<SampleMessage> = messages.iter().map(as_stored).collect();
    let report = check_exactly_once(&objects, &stored)?;
    assert_eq!(report.records, messages.len(), "{report:?}");

    let mut records: HashMap<Vec<u8>, &Value> = HashMap::new();
    for object in &objects {
        for record in &object.records {
            records.insert(harness::oracle::decode_payload(record)?, record);
        }
    }
    for s in &sent {
        let record = records
            .get(&s.message.payload)
            .copied()
            .ok_or_else(|| anyhow::anyhow!("a sent message is not stored"))?;
        // Exactly what the producer's metadata said; absent (not null) on other records.
        assert_eq!(record.get("chunk"), s.chunk.as_ref(), "chunk of {record}");
        assert_eq!(
            record.get("encryption"),
            s.encryption.as_ref(),
            "encryption of {record}"
        );
    }
    let chunk_records = records
        .values()
        .filter(|r| r.get("chunk").is_some())
        .count();
    assert_eq!(chunk_records, 3 + 2 + 4 + 2, "a record per chunk");
    let fragment_not_utf8 = records
        .values()
        .any(|r| r.get("chunk").is_some() && r["payload_encoding"] == "base64");
    assert!(fragment_not_utf8, "some fragments are not UTF-8 alone");

    // Reassembly as docs/user-guide.md describes it: the chunks of one uuid, by chunk_id,
    // payloads decoded and concatenated, across objects.
    let mut by_uuid: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for record in records.values() {
        if let Some(uuid) = record.get("chunk").and_then(|c| c["uuid"].as_str()) {
            by_uuid.entry(uuid).or_default().push(record);
        }
    }
    assert_eq!(by_uuid.len(), logical.len());
    for (uuid, whole) in &logical {
        let chunks = by_uuid
            .get_mut(uuid.as_str())
            .ok_or_else(|| anyhow::anyhow!("no chunks of {uuid}"))?;
        chunks.sort_by_key(|r| r["chunk"]["chunk_id"].as_i64());
        let first = &chunks[0]["chunk"];
        assert_eq!(
            Some(chunks.len() as i64),
            first["num_chunks"].as_i64(),
            "{uuid}: every chunk"
        );
        let mut joined = Vec::new();
        for record in chunks.iter() {
            joined.extend(harness::oracle::decode_payload(record)?);
        }
        assert_eq!(
            Some(joined.len() as i64),
            first["total_size"].as_i64(),
            "{uuid}: total_size"
        );
        assert_eq!(&joined, whole, "{uuid} reassembles");
    }
    Ok(())
}

/// pulsar-rs decompresses an entry before anything else, encrypted or not, so what it hands over
/// for a compressed encrypted entry is never the ciphertext the keys decrypt. Such an entry is
/// treated as one the client cannot decode (guarantee 6): the rule stops before it until
/// `rule skip`, rather than storing bytes nobody can decrypt as if they were the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_encrypted_entry_blocks_its_rule_until_skipped() -> anyhow::Result<()> {
    let (stack, faults) = stack_annotating().await?;
    let rule = "compressed-secret";
    let topic = unique_topic("compressed-secret");
    let full_topic = format!("persistent://public/default/{topic}");
    let mut messages = sample_messages(30, 9);
    messages[12].properties.insert(
        ENCRYPTION_PROPERTY.into(),
        encryption(50, None, false).to_string(),
    );
    let secret = messages[12].payload.clone();
    produce_zlib(&stack.pulsar.url(), &full_topic, &messages, false).await?;
    stack.create_rule(rule, &topic, &["--window", "1s", "--max-messages", "5"])?;

    let status = eventually("the rule to be blocked", Duration::from_secs(90), || {
        let status = stack.rule_status(rule)?;
        Ok((status["state"] == "blocked").then_some(status))
    })
    .await?;
    let annotated = faults.annotated();
    assert_eq!(annotated.len(), 1, "{annotated:?}");
    let (ledger, entry, _) = annotated[0];
    let name = format!("{ledger}:{entry}");
    assert_eq!(
        status["blocked_entries"],
        json!([name.clone()]),
        "status names the encrypted entry: {status}"
    );
    let reason = status["state_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("encrypted") && reason.contains("compressed"),
        "the reason says why: {reason}"
    );

    let out = stack.ctl(&["rule", "skip", rule, "--entry", &name]);
    assert!(
        out.status.success(),
        "rule skip failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rest: Vec<SampleMessage> = messages
        .iter()
        .filter(|m| m.payload != secret)
        .cloned()
        .collect();
    let objects = stack
        .wait_until_stored(rule, &rest, Duration::from_secs(90))
        .await?;
    let report = check_exactly_once(&objects, &rest)?;
    assert_eq!(
        report.records,
        rest.len(),
        "only the skipped entry is missing"
    );
    let status = stack.rule_status(rule)?;
    assert_eq!(status["state"], "running", "{status}");
    // Nothing was stored with encryption metadata it does not match.
    let all = read_all(&stack.s3.client(), BUCKET, "").await?;
    assert!(all
        .iter()
        .flat_map(|o| &o.records)
        .all(|r| r.get("encryption").is_none()));
    Ok(())
}
