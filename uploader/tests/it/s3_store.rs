//! The S3 store against a real S3 implementation: s3s-fs served in-process (SigV4 enforced,
//! Content-MD5 and x-amz-checksum-crc32c checked by the server, real multipart).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use proto::types::Secret;
use rand::{Rng, SeedableRng};
use uploader::config::Credentials;
use uploader::store::s3::{checksum_crc32c, client_config, load_shared_config, S3Store};
use uploader::store::{Body, PutRequest, RequestChecksum, S3Target};
use uploader::verify::{self, Expected};
use uploader::UploadError;

use crate::common::{serve, Recorder, Server, TamperChecksums, AK, BUCKET, SK};

const MIB: usize = 1 << 20;

async fn store(server: &Server, recorder: &Recorder) -> S3Store {
    store_with(server, recorder, RequestChecksum::Md5, false).await
}

/// `tamper`: every request's integrity header is replaced by a wrong one (before signing).
async fn store_with(
    server: &Server,
    recorder: &Recorder,
    checksum: RequestChecksum,
    tamper: bool,
) -> S3Store {
    let creds = Credentials::Static {
        source: "test",
        access_key_id: Secret::new(AK),
        secret_access_key: Secret::new(SK),
        session_token: None,
    };
    let shared = load_shared_config(&creds).await;
    let target = S3Target {
        endpoint: server.endpoint(),
        region: "us-east-1".into(),
        path_style: true,
        checksum,
    };
    let mut config = client_config(&shared, &target).interceptor(recorder.clone());
    if tamper {
        config = config.interceptor(TamperChecksums);
    }
    S3Store::from_client_config(config.build(), &target, 5 * MIB as u64, 5 * MIB as u64)
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data[..]);
    data
}

/// `data` in odd-sized chunks (as the ingester might send), verified against `crc`.
fn body(data: &[u8], crc: u32) -> Body {
    let chunks: Vec<Result<Bytes, UploadError>> = data
        .chunks(300_007)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let expected = Expected {
        len: data.len() as u64,
        crc32c: crc,
    };
    verify::verifying(
        futures::stream::iter(chunks).boxed(),
        expected,
        Arc::new(AtomicU64::new(0)),
    )
}

fn request(key: &str, len: usize, crc_hex: &str) -> PutRequest {
    PutRequest {
        bucket: BUCKET.into(),
        key: key.into(),
        metadata: vec![
            ("rule".into(), "orders-backup".into()),
            ("message-count".into(), "42".into()),
            ("content-crc32c".into(), crc_hex.into()),
        ],
        content_type: "application/gzip".into(),
        total_len: len as u64,
    }
}

fn stored_file(server: &Server, key: &str) -> Option<Vec<u8>> {
    std::fs::read(server.root.path().join(BUCKET).join(key)).ok()
}

fn no_flexible_checksums(recorder: &Recorder) {
    for (method, uri, headers) in recorder.requests() {
        assert!(
            !headers
                .iter()
                .any(|h| h.starts_with("x-amz-checksum-") || h == "x-amz-sdk-checksum-algorithm"),
            "{method} {uri} sent flexible checksum headers: {headers:?}"
        );
    }
}

#[tokio::test]
async fn single_put_round_trips_with_metadata_and_md5() {
    let server = serve().await;
    let recorder = Recorder::default();
    let store = store(&server, &recorder).await;
    let data = random_bytes(MIB + 17, 1);
    let crc = crc32c::crc32c(&data);
    let key = "public/default/orders/2026/11/24/02/seg-1.jsonl.gz";

    let out = store
        .put_object(
            &request(key, data.len(), &format!("{crc:08x}")),
            body(&data, crc),
        )
        .await
        .expect("stored");
    assert!(!out.etag.is_empty());
    assert_eq!(stored_file(&server, key).as_deref(), Some(&data[..]));

    let head = store
        .head_object(BUCKET, key)
        .await
        .expect("head")
        .expect("exists");
    assert_eq!(head.size, data.len() as u64);
    assert_eq!(
        head.metadata.get("rule").map(String::as_str),
        Some("orders-backup")
    );
    assert_eq!(
        head.metadata.get("content-crc32c"),
        Some(&format!("{crc:08x}"))
    );
    assert_eq!(
        store
            .head_object(BUCKET, "missing/key")
            .await
            .expect("head"),
        None
    );

    let puts: Vec<_> = recorder
        .requests()
        .into_iter()
        .filter(|(m, _, _)| m == "PUT")
        .collect();
    assert_eq!(puts.len(), 1, "one PutObject");
    assert!(
        puts[0].2.iter().any(|h| h == "content-md5"),
        "{:?}",
        puts[0].2
    );
    no_flexible_checksums(&recorder);
}

#[tokio::test]
async fn multipart_round_trips_byte_identical() {
    let server = serve().await;
    let recorder = Recorder::default();
    let store = store(&server, &recorder).await;
    let data = random_bytes(12 * MIB, 2);
    let crc = crc32c::crc32c(&data);
    let key = "public/default/orders/2026/11/24/02/seg-2.jsonl.gz";

    let out = store
        .put_object(
            &request(key, data.len(), &format!("{crc:08x}")),
            body(&data, crc),
        )
        .await
        .expect("stored");
    assert!(
        out.etag.contains("-3"),
        "multipart ETag of 3 parts: {}",
        out.etag
    );
    assert_eq!(stored_file(&server, key).as_deref(), Some(&data[..]));

    let head = store
        .head_object(BUCKET, key)
        .await
        .expect("head")
        .expect("exists");
    assert_eq!(head.size, data.len() as u64);
    assert_eq!(
        head.metadata.get("message-count").map(String::as_str),
        Some("42")
    );

    let parts: Vec<_> = recorder
        .requests()
        .into_iter()
        .filter(|(m, uri, _)| m == "PUT" && uri.contains("partNumber="))
        .collect();
    assert_eq!(parts.len(), 3, "5 + 5 + 2 MiB");
    assert!(parts
        .iter()
        .all(|(_, _, h)| h.iter().any(|h| h == "content-md5")));
    no_flexible_checksums(&recorder);
}

/// The CRC32C flavour (what `auto` picks for non-COS stores): single PUT and multipart carry
/// `x-amz-checksum-crc32c` and no Content-MD5, and the objects are byte-identical.
#[tokio::test]
async fn crc32c_put_and_multipart_round_trip() {
    let server = serve().await;
    let recorder = Recorder::default();
    let store = store_with(&server, &recorder, RequestChecksum::Crc32c, false).await;
    for (len, key) in [(MIB + 17, "single.jsonl.gz"), (12 * MIB, "multi.jsonl.gz")] {
        let data = random_bytes(len, len as u64);
        let crc = crc32c::crc32c(&data);
        store
            .put_object(&request(key, len, &format!("{crc:08x}")), body(&data, crc))
            .await
            .expect("stored");
        assert_eq!(
            stored_file(&server, key).as_deref(),
            Some(&data[..]),
            "{key}"
        );
    }
    let requests = recorder.requests();
    let puts: Vec<_> = requests.iter().filter(|(m, _, _)| m == "PUT").collect();
    assert_eq!(puts.len(), 1 + 3, "one PutObject, three parts");
    for (_, uri, headers) in &puts {
        assert!(
            headers.iter().any(|h| h == "x-amz-checksum-crc32c"),
            "{uri}: {headers:?}"
        );
        assert!(
            !headers.iter().any(|h| h == "content-md5"),
            "{uri}: {headers:?}"
        );
    }
    // The well-known CRC32C of "123456789" is 0xe3069283.
    assert_eq!(checksum_crc32c(b"123456789"), "4waSgw==");
}

/// The store itself checks the integrity header: a PutObject whose header does not match its
/// bytes is refused, whichever checksum is used. (s3s-fs 0.14 checks headers on PutObject only,
/// not on UploadPart, so parts cannot be tested this way here; S3 and COS check both.)
#[tokio::test]
async fn the_store_refuses_bytes_that_do_not_match_the_header() {
    let server = serve().await;
    for checksum in [RequestChecksum::Md5, RequestChecksum::Crc32c] {
        let recorder = Recorder::default();
        let store = store_with(&server, &recorder, checksum, true).await;
        let data = random_bytes(1000, 9);
        let crc = crc32c::crc32c(&data);
        let err = store
            .put_object(
                &request("tampered.jsonl.gz", data.len(), &format!("{crc:08x}")),
                body(&data, crc),
            )
            .await
            .expect_err("the store must refuse a wrong checksum");
        assert!(
            matches!(err, UploadError::Store { .. }) && err.to_string().contains("BadDigest"),
            "{checksum:?}: {err}"
        );
    }
}

#[tokio::test]
async fn crc_mismatch_aborts_and_leaves_no_object() {
    let server = serve().await;
    let recorder = Recorder::default();
    let store = store(&server, &recorder).await;
    let data = random_bytes(11 * MIB, 3);
    let wrong_crc = crc32c::crc32c(&data) ^ 1;
    let key = "public/default/orders/2026/11/24/02/seg-3.jsonl.gz";

    let err = store
        .put_object(
            &request(key, data.len(), &format!("{wrong_crc:08x}")),
            body(&data, wrong_crc),
        )
        .await
        .expect_err("checksum mismatch");
    assert!(matches!(err, UploadError::Integrity(_)), "{err}");
    assert_eq!(store.head_object(BUCKET, key).await.expect("head"), None);
    assert!(stored_file(&server, key).is_none());

    let requests = recorder.requests();
    assert!(
        requests
            .iter()
            .any(|(m, uri, _)| m == "DELETE" && uri.contains("uploadId=")),
        "aborted"
    );
    assert!(
        !requests
            .iter()
            .any(|(m, uri, _)| m == "POST" && uri.contains("uploadId=")),
        "never completed"
    );
    let leftovers = std::fs::read_dir(server.root.path())
        .expect("root")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".upload_id-"))
        .count();
    assert_eq!(leftovers, 0, "parts of the aborted upload remain");

    // Single PUT: the mismatch is found before anything is sent.
    let small = random_bytes(1000, 4);
    let before = recorder.requests().len();
    let err = store
        .put_object(
            &request("small.jsonl.gz", small.len(), "00000000"),
            body(&small, 0),
        )
        .await
        .expect_err("checksum mismatch");
    assert!(matches!(err, UploadError::Integrity(_)), "{err}");
    assert_eq!(recorder.requests().len(), before, "nothing sent");
}

#[tokio::test]
async fn wrong_secret_is_refused_without_leaking_it() {
    let server = serve().await;
    let creds = Credentials::Static {
        source: "test",
        access_key_id: Secret::new(AK),
        secret_access_key: Secret::new("not-the-right-secret"),
        session_token: None,
    };
    let shared = load_shared_config(&creds).await;
    let target = S3Target {
        endpoint: server.endpoint(),
        region: "us-east-1".into(),
        path_style: true,
        checksum: RequestChecksum::Crc32c,
    };
    let store = S3Store::new(&shared, &target, 5 * MIB as u64, 5 * MIB as u64);
    let data = b"hello".to_vec();
    let crc = crc32c::crc32c(&data);
    let err = store
        .put_object(
            &request("k.jsonl", data.len(), &format!("{crc:08x}")),
            body(&data, crc),
        )
        .await
        .expect_err("bad signature");
    let text = uploader::error::error_chain(&err);
    assert!(text.contains("PutObject"), "{text}");
    assert!(!text.contains("not-the-right-secret"), "{text}");
}
