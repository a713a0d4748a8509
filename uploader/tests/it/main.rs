//! The uploader's integration tests, linked as one test executable (as ripgrep keeps one per
//! crate): each file under `tests/` used to be its own binary, linked against the whole
//! dependency tree (the AWS SDK, tonic, s3s) once per file.
//!
//! - [`pipeline`]: the whole loop against a fake ingester and the embedded file store;
//! - [`s3_store`]: the S3 store against in-process s3s-fs (requests, checksums, errors);
//! - [`resume`]: resumable multipart uploads against s3s-fs and moto's server;
//! - [`conformance`]: one suite of store checks run against the file store, s3s-fs and moto;
//! - [`state_format`]: a `state_dir` written before format stamps is opened and still read;
//! - [`common`]: what they share: the S3 servers under test, SDK interceptors, the store and
//!   router builders, segments and their verified bodies, and the fake ingester.

mod common;
mod conformance;
mod pipeline;
mod resume;
mod s3_store;
mod state_format;
