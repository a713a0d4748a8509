//! Real services the tests run against: pulsar-lite (behind the relay) and an in-process s3s-fs.

pub mod fault_proxy;
pub mod pulsar_lite;
pub mod pulsar_tls;
pub mod relay;
pub mod s3;
