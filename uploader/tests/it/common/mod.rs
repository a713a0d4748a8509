//! What the uploader's tests share: the S3 servers under test, SDK interceptors that record or
//! alter requests, the store and router builders, segments and their verified bodies, and a
//! fake ingester.

mod fake_ingester;
mod interceptors;
mod segments;
mod servers;
mod stores;

pub use fake_ingester::{fake_segment, serve_fake, Fake, Mode, Seg};
pub use interceptors::{BreakListParts, OpenRequests, Recorded, Recorder, TamperChecksums};
pub use segments::{expected, random_bytes, segment, verified_body};
pub use servers::{moto_not_installed, plain_client, serve, Server, StoreKind, TestStore};
pub use stores::{file_names, router, s3_store, s3_target, s3s_fs_uploads};

pub const AK: &str = "AKIDTESTKEY";
pub const SK: &str = "test-secret-key-value";
pub const BUCKET: &str = "backup-1250000000";
