pub mod dir_format;
pub mod manifest;
pub mod message_id;
pub mod object_key;
pub mod parquet_record;
pub mod record;
pub mod record_read;
pub mod rule;
pub mod secret;
pub mod segment_files;
pub mod time;

pub use message_id::MessageId;
pub use object_key::{object_key, SegmentName, TopicName};
pub use record::{encode_record, ChunkFields, EncryptionFields, EncryptionKey, RecordFields};
pub use record_read::{decode_record, Record, RecordError};
pub use rule::{
    Compression, Format, KeyLayout, RuleConfig, RuleError, RuleSpecInput, StartPosition,
    SubscriptionKind,
};
pub use secret::Secret;
