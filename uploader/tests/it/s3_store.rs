//! The S3 store against a real S3 implementation: s3s-fs served in-process (SigV4 enforced,
//! Content-MD5 and x-amz-checksum-crc32c checked by the server, real multipart). Objects up to
//! the multipart threshold go up with [`S3Store::put_object`], larger ones with the uploader's
//! resumable [`multipart::upload`], as [`uploader::upload`] sends them.

use aws_sdk_s3::config::SharedInterceptor;
use proto::types::Secret;
use uploader::config::Credentials;
use uploader::multipart::{self, Identity, Journal};
use uploader::store::s3::{checksum_crc32c, load_shared_config, S3Store};
use uploader::store::{Body, PutOutcome, PutRequest, RequestChecksum, S3Target, StoreRouter};
use uploader::verify::Expected;
use uploader::UploadError;

use crate::common::{
    self, random_bytes, s3_target, serve, Recorder, Server, TamperChecksums, AK, BUCKET,
};

const MIB: usize = 1 << 20;
/// Part size and multipart threshold.
const PART: u64 = 5 * MIB as u64;

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
    let mut interceptors = vec![SharedInterceptor::new(recorder.clone())];
    if tamper {
        interceptors.push(SharedInterceptor::new(TamperChecksums));
    }
    common::s3_store(&s3_target(&server.endpoint(), checksum), PART, interceptors).await
}

/// The store plus what the uploader's multipart upload needs besides: the router (its part
/// budget: one part at a time here) and the journal, in a temp dir.
struct Uploader {
    store: S3Store,
    target: S3Target,
    router: StoreRouter,
    journal: Journal,
    _state: tempfile::TempDir,
}

async fn uploader(server: &Server, recorder: &Recorder, checksum: RequestChecksum) -> Uploader {
    let state = tempfile::tempdir().expect("state dir");
    Uploader {
        store: store_with(server, recorder, checksum, false).await,
        target: s3_target(&server.endpoint(), checksum),
        router: common::router(None, checksum, PART, 1),
        journal: Journal::new(state.path()),
        _state: state,
    }
}

impl Uploader {
    /// `data` through [`multipart::upload`], the body verified against `crc`.
    async fn multipart(
        &self,
        req: &PutRequest,
        data: &[u8],
        crc: u32,
    ) -> Result<PutOutcome, UploadError> {
        let identity = Identity {
            rule: "orders-backup".into(),
            segment_no: 1,
            bucket: req.bucket.clone(),
            key: req.key.clone(),
            file_bytes: req.total_len,
            content_crc32c: format!("{crc:08x}"),
            part_size: PART,
            target: self.target.clone(),
        };
        multipart::upload(
            &self.store,
            &self.router,
            &self.journal,
            identity,
            req,
            body(data, crc),
        )
        .await
    }
}

/// `data` in odd-sized chunks (as the ingester might send), verified against `crc`.
fn body(data: &[u8], crc: u32) -> Body {
    let expected = Expected {
        len: data.len() as u64,
        crc32c: crc,
    };
    common::verified_body(data, 300_007, false, expected)
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
        if_absent: false,
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

/// An object above the threshold goes up in parts of `part_size` through the multipart upload,
/// each with its Content-MD5, and the stored object is the body byte for byte. The single PUT
/// refuses it outright.
#[tokio::test]
async fn multipart_round_trips_byte_identical() {
    let server = serve().await;
    let recorder = Recorder::default();
    let up = uploader(&server, &recorder, RequestChecksum::Md5).await;
    let data = random_bytes(12 * MIB, 2);
    let crc = crc32c::crc32c(&data);
    let key = "public/default/orders/2026/11/24/02/seg-2.jsonl.gz";
    let req = request(key, data.len(), &format!("{crc:08x}"));

    let err = up
        .store
        .put_object(&req, body(&data, crc))
        .await
        .expect_err("above the multipart threshold");
    assert!(
        matches!(err, UploadError::TooLargeForSinglePut { len, threshold }
            if len == data.len() as u64 && threshold == PART),
        "{err}"
    );
    assert_eq!(recorder.requests(), Vec::new(), "nothing sent");

    let out = up.multipart(&req, &data, crc).await.expect("stored");
    assert!(
        out.etag.contains("-3"),
        "multipart ETag of 3 parts: {}",
        out.etag
    );
    assert_eq!(stored_file(&server, key).as_deref(), Some(&data[..]));

    let head = up
        .store
        .head_object(BUCKET, key)
        .await
        .expect("head")
        .expect("exists");
    assert_eq!(head.size, data.len() as u64);
    assert_eq!(
        head.metadata.get("message-count").map(String::as_str),
        Some("42")
    );

    assert_eq!(
        recorder.part_sizes(),
        vec![(1, PART), (2, PART), (3, 2 * MIB as u64)],
        "5 + 5 + 2 MiB"
    );
    let parts: Vec<_> = recorder
        .requests()
        .into_iter()
        .filter(|(m, uri, _)| m == "PUT" && uri.contains("partNumber="))
        .collect();
    assert_eq!(parts.len(), 3);
    assert!(parts
        .iter()
        .all(|(_, _, h)| h.iter().any(|h| h == "content-md5")));
    no_flexible_checksums(&recorder);
    assert!(up.journal.list().await.is_empty(), "no state left");
}

/// The CRC32C flavour (what `auto` picks for non-COS stores): the single PUT and every part
/// carry `x-amz-checksum-crc32c` and no Content-MD5, the multipart upload is created with that
/// algorithm, and the objects are byte-identical.
#[tokio::test]
async fn crc32c_put_and_multipart_round_trip() {
    let server = serve().await;
    let recorder = Recorder::default();
    let up = uploader(&server, &recorder, RequestChecksum::Crc32c).await;

    let single = random_bytes(MIB + 17, (MIB + 17) as u64);
    let crc = crc32c::crc32c(&single);
    let req = request("single.jsonl.gz", single.len(), &format!("{crc:08x}"));
    up.store
        .put_object(&req, body(&single, crc))
        .await
        .expect("stored");
    assert_eq!(
        stored_file(&server, "single.jsonl.gz").as_deref(),
        Some(&single[..])
    );

    let multi = random_bytes(12 * MIB, (12 * MIB) as u64);
    let crc = crc32c::crc32c(&multi);
    let req = request("multi.jsonl.gz", multi.len(), &format!("{crc:08x}"));
    up.multipart(&req, &multi, crc).await.expect("stored");
    assert_eq!(
        stored_file(&server, "multi.jsonl.gz").as_deref(),
        Some(&multi[..])
    );

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
    let created: Vec<_> = requests
        .iter()
        .filter(|(m, uri, _)| m == "POST" && uri.contains("?uploads"))
        .collect();
    assert_eq!(created.len(), 1, "{requests:?}");
    assert!(
        created[0].2.iter().any(|h| h == "x-amz-checksum-algorithm"),
        "{:?}",
        created[0]
    );
    assert_eq!(
        recorder.part_sizes(),
        vec![(1, PART), (2, PART), (3, 2 * MIB as u64)]
    );
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

/// A body that fails its length/CRC32C check never becomes an object: the multipart upload is
/// aborted (its parts removed from the store, its state from the journal) and never completed;
/// a single PUT sends nothing at all.
#[tokio::test]
async fn crc_mismatch_aborts_and_leaves_no_object() {
    let server = serve().await;
    let recorder = Recorder::default();
    let up = uploader(&server, &recorder, RequestChecksum::Md5).await;
    let data = random_bytes(11 * MIB, 3);
    let wrong_crc = crc32c::crc32c(&data) ^ 1;
    let key = "public/default/orders/2026/11/24/02/seg-3.jsonl.gz";

    let err = up
        .multipart(
            &request(key, data.len(), &format!("{wrong_crc:08x}")),
            &data,
            wrong_crc,
        )
        .await
        .expect_err("checksum mismatch");
    assert!(matches!(err, UploadError::Integrity(_)), "{err}");
    assert_eq!(up.store.head_object(BUCKET, key).await.expect("head"), None);
    assert!(stored_file(&server, key).is_none());

    let requests = recorder.requests();
    assert_eq!(
        recorder.part_sizes(),
        vec![(1, PART), (2, PART)],
        "the mismatch shows at the end of the body, while the last part is read: it never goes"
    );
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
    // s3s-fs keeps an upload as `.upload-ID.json` and its parts as `.upload_id-ID.part-N`.
    let leftovers: Vec<_> = std::fs::read_dir(server.root.path())
        .expect("root")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".upload-") || n.starts_with(".upload_id-"))
        .collect();
    assert_eq!(
        leftovers,
        Vec::<String>::new(),
        "the aborted upload remains"
    );
    assert!(up.journal.list().await.is_empty(), "no state left");

    // Single PUT: the mismatch is found before anything is sent.
    let small = random_bytes(1000, 4);
    let before = recorder.requests().len();
    let err = up
        .store
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
    let target = s3_target(&server.endpoint(), RequestChecksum::Crc32c);
    let store = S3Store::new(&shared, &target, PART, PART);
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

/// A fenced segment's object is created only where its key is free (`If-None-Match: *`, on the
/// single PUT and on CompleteMultipartUpload): a second writer is told the key is taken, the
/// first object stays as it was, and the refused multipart upload leaves no parts behind.
#[tokio::test]
async fn a_conditional_create_never_replaces_another_writers_object() {
    let server = serve().await;
    let recorder = Recorder::default();
    let up = uploader(&server, &recorder, RequestChecksum::Crc32c).await;
    let key = "public/default/orders/2026/11/24/02/r1-20261124T020000Z-7_5_0_-1.jsonl.gz";
    let first = random_bytes(1000, 7);
    let crc = crc32c::crc32c(&first);
    let mut req = request(key, first.len(), &format!("{crc:08x}"));
    req.if_absent = true;
    up.store
        .put_object(&req, body(&first, crc))
        .await
        .expect("the key is free");

    let second = random_bytes(900, 8);
    let crc2 = crc32c::crc32c(&second);
    let mut req2 = request(key, second.len(), &format!("{crc2:08x}"));
    req2.if_absent = true;
    let err = up
        .store
        .put_object(&req2, body(&second, crc2))
        .await
        .expect_err("taken");
    assert!(matches!(err, UploadError::KeyTaken { .. }), "{err}");
    assert_eq!(stored_file(&server, key).as_deref(), Some(&first[..]));

    let big = random_bytes(11 * MIB, 9);
    let crc3 = crc32c::crc32c(&big);
    let mut req3 = request(key, big.len(), &format!("{crc3:08x}"));
    req3.if_absent = true;
    let err = up.multipart(&req3, &big, crc3).await.expect_err("taken");
    assert!(matches!(err, UploadError::KeyTaken { .. }), "{err}");
    assert_eq!(stored_file(&server, key).as_deref(), Some(&first[..]));
    assert!(
        up.journal.list().await.is_empty(),
        "the refused upload is aborted"
    );
    let sent: Vec<String> = recorder
        .requests()
        .into_iter()
        .filter(|(m, uri, _)| m == "POST" && uri.contains("uploadId="))
        .flat_map(|(_, _, headers)| headers)
        .collect();
    assert!(
        sent.iter().any(|h| h == "if-none-match"),
        "CompleteMultipartUpload carries If-None-Match: {sent:?}"
    );
}

/// To COS a conditional create also sends COS's own guard, `x-cos-forbid-overwrite: true`,
/// signed, on the single PUT and on CompleteMultipartUpload (and only there: an unconditional
/// write and the other requests of a multipart upload go without it). s3s-fs stands in for COS
/// here: it ignores the header and honours `If-None-Match`, so the outcome is the same.
#[tokio::test]
async fn a_conditional_create_to_cos_also_forbids_overwriting() {
    let server = serve().await;
    let recorder = Recorder::default();
    let mut up = uploader(&server, &recorder, RequestChecksum::Crc32c).await;
    up.store = up.store.with_cos_forbid_overwrite(true);
    // The requests since the last call that carried the guard (method and query), each checked
    // to have signed it.
    let guarded = |recorder: &Recorder| {
        let signed = recorder.signed_headers();
        recorder
            .take()
            .iter()
            .zip(&signed)
            .filter(|((_, _, headers), signed)| {
                let sent = headers.iter().any(|h| h == "x-cos-forbid-overwrite");
                let signed = signed.iter().any(|h| h == "x-cos-forbid-overwrite");
                assert_eq!(sent, signed, "the guard is signed when sent");
                sent
            })
            .map(|((method, uri, _), _)| {
                format!("{method} {}", uri.split('?').nth(1).unwrap_or(""))
            })
            .collect::<Vec<_>>()
    };

    let plain = random_bytes(1000, 21);
    let crc = crc32c::crc32c(&plain);
    let plain_req = request("cos/plain.jsonl.gz", plain.len(), &format!("{crc:08x}"));
    up.store
        .put_object(&plain_req, body(&plain, crc))
        .await
        .expect("unconditional put");
    assert!(
        guarded(&recorder).is_empty(),
        "an unconditional write goes without the guard"
    );

    let key = "cos/fenced.jsonl.gz";
    let mut first = request(key, plain.len(), &format!("{crc:08x}"));
    first.if_absent = true;
    up.store
        .put_object(&first, body(&plain, crc))
        .await
        .expect("the key is free");
    assert_eq!(guarded(&recorder), vec!["PUT x-id=PutObject"]);

    let big = random_bytes(11 * MIB, 22);
    let crc_big = crc32c::crc32c(&big);
    let mut second = request(key, big.len(), &format!("{crc_big:08x}"));
    second.if_absent = true;
    let err = up
        .multipart(&second, &big, crc_big)
        .await
        .expect_err("taken");
    assert!(matches!(err, UploadError::KeyTaken { .. }), "{err}");
    assert_eq!(stored_file(&server, key).as_deref(), Some(&plain[..]));
    let sent = guarded(&recorder);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        sent[0].starts_with("POST uploadId="),
        "only the complete: {sent:?}"
    );
}

/// The router's clients count every request by operation (the uploader's `store_requests`
/// metric): one PutObject for a small object; create, a part each, complete for a large one;
/// and a HEAD.
#[tokio::test]
async fn the_routers_clients_count_their_requests_by_operation() {
    let server = serve().await;
    let state = tempfile::tempdir().expect("state dir");
    let router = common::router(None, RequestChecksum::Crc32c, PART, 1);
    let target = s3_target(&server.endpoint(), RequestChecksum::Crc32c);
    let store = router.s3_store(&target).await;
    let small = random_bytes(1000, 3);
    let crc = crc32c::crc32c(&small);
    let key = "counted/small.jsonl.gz";
    store
        .put_object(
            &request(key, small.len(), &format!("{crc:08x}")),
            body(&small, crc),
        )
        .await
        .expect("small put");
    let big = random_bytes(11 * MIB, 4);
    let crc_big = crc32c::crc32c(&big);
    let big_key = "counted/big.jsonl.gz";
    let req = request(big_key, big.len(), &format!("{crc_big:08x}"));
    let identity = Identity {
        rule: "orders-backup".into(),
        segment_no: 2,
        bucket: BUCKET.into(),
        key: big_key.into(),
        file_bytes: big.len() as u64,
        content_crc32c: format!("{crc_big:08x}"),
        part_size: PART,
        target: target.clone(),
    };
    multipart::upload(
        &store,
        &router,
        &Journal::new(state.path()),
        identity,
        &req,
        body(&big, crc_big),
    )
    .await
    .expect("multipart upload");
    store
        .head_object(BUCKET, key)
        .await
        .expect("head")
        .expect("the object is there");

    let counts = router.request_counts().snapshot();
    let count = |op: &str| counts.get(op).copied().unwrap_or(0);
    assert_eq!(count("PutObject"), 1, "{counts:?}");
    assert_eq!(count("CreateMultipartUpload"), 1, "{counts:?}");
    assert_eq!(count("UploadPart"), 3, "11 MiB in 5 MiB parts: {counts:?}");
    assert_eq!(count("CompleteMultipartUpload"), 1, "{counts:?}");
    assert_eq!(count("HeadObject"), 1, "{counts:?}");
}
