//! Restore's Pulsar side: the ingester alone holds the target's token and produces what the
//! uploader reads back from the store.

pub mod producer;
pub mod targets;
