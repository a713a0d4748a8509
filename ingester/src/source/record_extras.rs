//! Chunked and end-to-end-encrypted messages, which pulsar-rs 6.9 hands over as they arrive: it
//! neither puts a message's chunks together nor decrypts. Each chunk becomes a record of its
//! own and an encrypted payload is stored as its ciphertext, so the record keeps the metadata
//! that reassembling or decrypting takes later (`chunk`, `encryption`: see
//! `proto::types::record`).
//!
//! That only works when what pulsar-rs hands over is the bytes the producer sent. It decompresses
//! an entry before anything else and splits a batch entry into its messages, encrypted or not;
//! but a producer compresses (and batches) *before* it encrypts or chunks, so for such an entry
//! pulsar-rs works on ciphertext or on a fragment. Usually that fails, and the entry is one the
//! client cannot decode (guarantee 6); when it happens to succeed, the result is neither the
//! message nor anything its keys decrypt. [`not_as_sent`] names those entries so the consumer
//! treats them as undecodable too, instead of storing bytes nobody can recover.

use proto::types::record::{ChunkFields, EncryptionFields, EncryptionKey};
use pulsar::message::proto::{CompressionType, MessageMetadata};

/// The record's `chunk`: `None` unless the producer set any of the chunk fields.
pub fn chunk_of(meta: &MessageMetadata) -> Option<ChunkFields<'_>> {
    let chunk = ChunkFields {
        uuid: meta.uuid.as_deref(),
        chunk_id: meta.chunk_id,
        num_chunks: meta.num_chunks_from_msg,
        total_size: meta.total_chunk_msg_size,
    };
    (!chunk.is_empty()).then_some(chunk)
}

/// The record's `encryption`: `None` unless the producer set any of the encryption fields.
pub fn encryption_of(meta: &MessageMetadata) -> Option<EncryptionFields<'_>> {
    let encryption = EncryptionFields {
        keys: meta
            .encryption_keys
            .iter()
            .map(|k| EncryptionKey {
                name: &k.key,
                value: &k.value,
                metadata: k
                    .metadata
                    .iter()
                    .map(|kv| (kv.key.as_str(), kv.value.as_str()))
                    .collect(),
            })
            .collect(),
        algorithm: meta.encryption_algo.as_deref(),
        param: meta.encryption_param.as_deref(),
    };
    (!encryption.is_empty()).then_some(encryption)
}

/// Why the payload pulsar-rs gives for a message of this entry is not what its producer sent,
/// when it is an encrypted message or a chunk of a compressed or batched entry; `None` for every
/// other message.
pub fn not_as_sent(meta: &MessageMetadata) -> Option<String> {
    let what = if chunk_of(meta).is_some() {
        "a chunk of a larger message"
    } else if !meta.encryption_keys.is_empty()
        || meta.encryption_algo.is_some()
        || meta.encryption_param.is_some()
    {
        "end-to-end encrypted"
    } else {
        return None;
    };
    let compression = meta
        .compression
        .filter(|&c| c != CompressionType::None as i32)
        .map(|c| {
            CompressionType::try_from(c)
                .map_or_else(|_| format!("compression {c}"), |c| format!("{c:?}"))
        });
    let how = match (compression, meta.num_messages_in_batch.is_some()) {
        (None, false) => return None,
        (Some(c), false) => format!("compressed ({c})"),
        (None, true) => "batched".to_string(),
        (Some(c), true) => format!("batched and compressed ({c})"),
    };
    Some(format!(
        "the entry is {what} and {how}: its producer compressed or batched before it encrypted \
         or split, but the client undoes that first, on this entry as it is, so what it gives \
         is not what was sent and could not be reassembled or decrypted"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulsar::message::proto::{EncryptionKeys, KeyValue};

    fn meta() -> MessageMetadata {
        MessageMetadata {
            producer_name: "p".into(),
            sequence_id: 3,
            publish_time: 1,
            ..MessageMetadata::default()
        }
    }

    #[test]
    fn plain_messages_have_no_extras() {
        let m = meta();
        assert_eq!(chunk_of(&m), None);
        assert_eq!(encryption_of(&m), None);
        assert_eq!(not_as_sent(&m), None);
        // Compressed or batched alone: pulsar-rs undoes both.
        let m = MessageMetadata {
            compression: Some(CompressionType::Zlib as i32),
            num_messages_in_batch: Some(4),
            ..meta()
        };
        assert_eq!(not_as_sent(&m), None);
    }

    #[test]
    fn chunk_and_encryption_fields_are_taken_as_they_are() {
        let m = MessageMetadata {
            uuid: Some("p-3".into()),
            chunk_id: Some(0),
            num_chunks_from_msg: Some(2),
            total_chunk_msg_size: Some(9_000_000),
            encryption_keys: vec![EncryptionKeys {
                key: "app".into(),
                value: vec![1, 2],
                metadata: vec![KeyValue {
                    key: "v".into(),
                    value: "1".into(),
                }],
            }],
            encryption_param: Some(vec![7; 12]),
            ..meta()
        };
        assert_eq!(
            chunk_of(&m),
            Some(ChunkFields {
                uuid: Some("p-3"),
                chunk_id: Some(0),
                num_chunks: Some(2),
                total_size: Some(9_000_000),
            })
        );
        let encryption = encryption_of(&m).expect("encrypted");
        assert_eq!(encryption.keys.len(), 1);
        assert_eq!(encryption.keys[0].name, "app");
        assert_eq!(encryption.keys[0].value, &[1, 2]);
        assert_eq!(encryption.keys[0].metadata, vec![("v", "1")]);
        assert_eq!(encryption.algorithm, None);
        assert_eq!(encryption.param, Some(&[7u8; 12][..]));
        assert_eq!(not_as_sent(&m), None, "uncompressed, not batched");
        // A single field is enough to keep the rest (as null).
        let m = MessageMetadata {
            chunk_id: Some(1),
            ..meta()
        };
        assert_eq!(chunk_of(&m).and_then(|c| c.uuid), None);
        assert!(chunk_of(&m).is_some());
    }

    #[test]
    fn compressed_or_batched_chunks_and_ciphertext_are_not_as_sent() {
        let encrypted = MessageMetadata {
            encryption_algo: Some("x".into()),
            compression: Some(CompressionType::Lz4 as i32),
            ..meta()
        };
        let why = not_as_sent(&encrypted).expect("not as sent");
        assert!(
            why.contains("encrypted") && why.contains("compressed (Lz4)"),
            "{why}"
        );
        let chunk = MessageMetadata {
            uuid: Some("u".into()),
            num_messages_in_batch: Some(1),
            ..meta()
        };
        let why = not_as_sent(&chunk).expect("not as sent");
        assert!(why.contains("chunk") && why.contains("batched"), "{why}");
        let unknown = MessageMetadata {
            compression: Some(99),
            ..chunk
        };
        let why = not_as_sent(&unknown).expect("not as sent");
        assert!(why.contains("compression 99"), "{why}");
    }
}
