//! Where a rule's messages come from: its Pulsar consumers, one per partition
//! ([`partition_consumers`]), and what the rule task must know about what they deliver — an
//! entry the client cannot decode ([`decode_fault`]), a message whose bytes are not the ones the
//! producer sent ([`record_extras`]), a topic whose ids went backwards ([`source_reset`]) — plus
//! removing a subscription the rule no longer reads ([`unsubscribe`]).
//!
//! Nothing here spools or acknowledges by itself: the rule task (`crate::consumer`) decides.

pub mod client;
pub mod decode_fault;
pub mod partition_consumers;
pub mod record_extras;
pub mod source_reset;
pub mod trust;
pub mod unsubscribe;
