//! Chunked and end-to-end-encrypted messages, which pulsar-rs 6.9 hands over as they arrive: it
//! neither puts a message's chunks together nor decrypts. Each chunk becomes a record of its
//! own and an encrypted payload is stored as its ciphertext, so the record keeps the metadata
//! that reassembling or decrypting takes later (`chunk`, `encryption`: see
//! `proto::types::record`).

use proto::types::record::{ChunkFields, EncryptionFields, EncryptionKey};
use pulsar::message::proto::MessageMetadata;

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
        // A single field is enough to keep the rest (as null).
        let m = MessageMetadata {
            chunk_id: Some(1),
            ..meta()
        };
        assert_eq!(chunk_of(&m).and_then(|c| c.uuid), None);
        assert!(chunk_of(&m).is_some());
    }
}
