//! Segments as the ingester offers them, and their bytes as the uploader reads them.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use proto::v1::SegmentInfo;
use rand::{Rng, SeedableRng};
use uploader::store::Body;
use uploader::verify::{self, Expected};
use uploader::UploadError;

use super::BUCKET;

/// `len` bytes that gzip cannot shrink, the same for the same `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data[..]);
    data
}

/// Segment `no` of the rule `orders`, holding `data`.
pub fn segment(no: u64, data: &[u8]) -> SegmentInfo {
    SegmentInfo {
        rule: "orders".into(),
        segment_no: no,
        state: "sealed".into(),
        window_start: "2026-11-24T02:40:00.000Z".into(),
        messages: 10 + no,
        record_bytes: data.len() as u64 + 100,
        file_bytes: data.len() as u64,
        first_message_id: "1:0:-1:-1".into(),
        last_message_id: format!("1:{no}:-1:-1"),
        content_crc32c: format!("{:08x}", crc32c::crc32c(data)),
        object_key: format!("public/default/orders/2026/11/24/02/orders-{no:06}.jsonl.gz"),
        bucket: BUCKET.into(),
        region: "us-east-1".into(),
        content_encoding: "gzip".into(),
        ..SegmentInfo::default()
    }
}

/// What the uploader checks a read of `seg` against: its size and CRC32C.
pub fn expected(seg: &SegmentInfo) -> Expected {
    Expected {
        len: seg.file_bytes,
        crc32c: verify::parse_crc32c(&seg.content_crc32c).expect("hex"),
    }
}

/// `data` in chunks of `chunk` bytes (odd sizes, as the ingester might send), checked against
/// `expected` as the uploader checks a read; with `breaks`, the stream then fails as a dropped
/// ReadSegment would.
pub fn verified_body(data: &[u8], chunk: usize, breaks: bool, expected: Expected) -> Body {
    let mut items: Vec<Result<Bytes, UploadError>> = data
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    if breaks {
        items.push(Err(UploadError::Ingester(
            "ReadSegment: stream broke".into(),
        )));
    }
    verify::verifying(
        futures::stream::iter(items).boxed(),
        expected,
        Arc::new(AtomicU64::new(0)),
    )
}
