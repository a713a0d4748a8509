//! What a `CommitSegment` must name before it may mark a segment stored: the object key, size
//! and CRC32C the ingester sealed. A commit frees the segment and lets its messages be
//! acknowledged on Pulsar, so one that names no object, or another object, must change nothing.

use proto::v1::CommitSegmentRequest;

use crate::spool::SegmentMeta;

/// Fields every commit must carry, whatever the segment's state.
pub fn check_request(req: &CommitSegmentRequest) -> Result<(), String> {
    let mut missing = Vec::new();
    if req.object_key.is_empty() {
        missing.push("object_key");
    }
    if req.file_bytes == 0 {
        missing.push("file_bytes");
    }
    if req.content_crc32c.is_empty() {
        missing.push("content_crc32c");
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "commit of segment {} of rule {:?} names no {}: a commit must name the stored object's \
         key, size and CRC32C as ListSealed gave them",
        req.segment_no,
        req.rule,
        missing.join(", ")
    ))
}

/// The request's object against the sealed segment's; the error names every field that differs.
pub fn check_against(req: &CommitSegmentRequest, meta: &SegmentMeta) -> Result<(), String> {
    let mut differs = Vec::new();
    if req.object_key != meta.object_key {
        differs.push(format!(
            "object_key {:?} (sealed: {:?})",
            req.object_key, meta.object_key
        ));
    }
    if req.file_bytes != meta.file_bytes {
        differs.push(format!(
            "file_bytes {} (sealed: {})",
            req.file_bytes, meta.file_bytes
        ));
    }
    let crc_matches =
        u32::from_str_radix(req.content_crc32c.trim(), 16).is_ok_and(|crc| crc == meta.crc32c);
    if !crc_matches {
        differs.push(format!(
            "content_crc32c {:?} (sealed: {:08x})",
            req.content_crc32c, meta.crc32c
        ));
    }
    if differs.is_empty() {
        return Ok(());
    }
    Err(format!(
        "commit of segment {} of rule {:?} does not match the sealed segment: {}",
        req.segment_no,
        req.rule,
        differs.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed() -> SegmentMeta {
        let mut meta: SegmentMeta = serde_json::from_value(serde_json::json!({
            "segment_no": 3, "state": "sealed", "window_start_ms": 0, "opened_at_ms": 0,
            "first_seq": 0, "last_seq": 0, "messages": 1, "record_bytes": 10,
            "first_id": null, "last_id": null, "oldest_publish_ms": 0, "ack_positions": {}
        }))
        .expect("a minimal meta");
        meta.object_key = "p/t/2026/01/01/00/r-x.jsonl.gz".into();
        meta.file_bytes = 123;
        meta.crc32c = 0x0a0b_0c0d;
        meta
    }

    fn request() -> CommitSegmentRequest {
        CommitSegmentRequest {
            rule: "r".into(),
            segment_no: 3,
            object_key: "p/t/2026/01/01/00/r-x.jsonl.gz".into(),
            file_bytes: 123,
            content_crc32c: "0a0b0c0d".into(),
            ..CommitSegmentRequest::default()
        }
    }

    #[test]
    fn a_commit_naming_the_sealed_object_passes() {
        assert_eq!(check_request(&request()), Ok(()));
        assert_eq!(check_against(&request(), &sealed()), Ok(()));
        let upper = CommitSegmentRequest {
            content_crc32c: "0A0B0C0D".into(),
            ..request()
        };
        assert_eq!(check_against(&upper, &sealed()), Ok(()));
    }

    #[test]
    fn a_commit_without_key_size_or_checksum_names_what_is_missing() {
        let err = check_request(&CommitSegmentRequest {
            object_key: String::new(),
            content_crc32c: String::new(),
            ..request()
        })
        .expect_err("missing fields");
        assert!(err.contains("object_key, content_crc32c"), "{err}");
        let err = check_request(&CommitSegmentRequest {
            file_bytes: 0,
            ..request()
        })
        .expect_err("no size");
        assert!(err.contains("file_bytes"), "{err}");
    }

    #[test]
    fn every_field_that_differs_is_named() {
        let err = check_against(
            &CommitSegmentRequest {
                file_bytes: 124,
                content_crc32c: "zz".into(),
                ..request()
            },
            &sealed(),
        )
        .expect_err("differs");
        assert!(
            err.contains("file_bytes 124 (sealed: 123)")
                && err.contains("content_crc32c \"zz\" (sealed: 0a0b0c0d)"),
            "{err}"
        );
        assert!(!err.contains("object_key"), "{err}");
        let err = check_against(
            &CommitSegmentRequest {
                object_key: "elsewhere".into(),
                ..request()
            },
            &sealed(),
        )
        .expect_err("another key");
        assert!(err.contains("object_key \"elsewhere\""), "{err}");
    }
}
