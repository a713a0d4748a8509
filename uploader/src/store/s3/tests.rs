use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents, SharedCredentialsProvider};

use super::*;
use crate::store::{resolve_target, ChecksumChoice, StoreEndpoint, Target};

/// Records the signed request and stops it before it reaches the network.
#[derive(Debug, Clone, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

/// URI and (lower-cased) headers of one request.
type Captured = (String, Vec<(String, String)>);

impl Intercept for Capture {
    fn name(&self) -> &'static str {
        "capture"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let req = context.request();
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        self.0
            .lock()
            .expect("test mutex")
            .push((req.uri().to_string(), headers));
        Err("captured, not sent".into())
    }
}

fn shared() -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .credentials_provider(SharedCredentialsProvider::new(
            aws_sdk_s3::config::Credentials::new("AKIDtest", "very-secret-key", None, None, "test"),
        ))
        .build()
}

fn pool() -> PartBuffers {
    PartBuffers::new(3, 2)
}

fn body(chunks: Vec<&'static [u8]>) -> Body {
    futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c)))).boxed()
}

async fn capture_put(target: Target) -> (String, Vec<(String, String)>, UploadError) {
    capture_put_with(target, PayloadSigning::Auto, false).await
}

async fn capture_put_with(
    target: Target,
    signing: PayloadSigning,
    if_absent: bool,
) -> (String, Vec<(String, String)>, UploadError) {
    let Target::S3(target) = target else {
        panic!("S3 target expected")
    };
    let capture = Capture::default();
    let config = client_config(&shared(), &target)
        .interceptor(capture.clone())
        .build();
    assert_eq!(
        config.request_checksum_calculation(),
        Some(&RequestChecksumCalculation::WhenRequired)
    );
    assert_eq!(
        config.response_checksum_validation(),
        Some(&ResponseChecksumValidation::WhenRequired)
    );
    let store = S3Store::from_client_config(config, &target, 8 << 20, 8 << 20)
        .with_payload_signing(signing);
    let req = PutRequest {
        bucket: "examplebucket-1250000000".into(),
        key: "orders/2026/11/24/02/seg.jsonl.gz".into(),
        metadata: vec![("rule".into(), "orders-backup".into())],
        content_type: "application/gzip".into(),
        total_len: 11,
        if_absent,
    };
    let err = store
        .put_object(&req, body(vec![b"hello ", b"world"]))
        .await
        .expect_err("the interceptor stops the request");
    let (uri, headers) = capture
        .0
        .lock()
        .expect("test mutex")
        .pop()
        .expect("one request");
    (uri, headers, err)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn cos_put_is_virtual_hosted_with_md5_and_no_flexible_checksum() {
    let target = cos_target();
    let (uri, headers, err) = capture_put(target).await;
    assert!(
        uri.starts_with("https://examplebucket-1250000000.cos.ap-guangzhou.myqcloud.com/orders/2026/11/24/02/seg.jsonl.gz"),
        "{uri}"
    );
    assert_eq!(
        header(&headers, "content-md5"),
        Some(content_md5(b"hello world").as_str())
    );
    assert_eq!(header(&headers, "content-type"), Some("application/gzip"));
    assert_eq!(header(&headers, "content-encoding"), None);
    assert_eq!(header(&headers, "x-amz-meta-rule"), Some("orders-backup"));
    assert!(
        !headers
            .iter()
            .any(|(k, _)| k.starts_with("x-amz-checksum-") || k == "x-amz-sdk-checksum-algorithm"),
        "{headers:?}"
    );
    let auth = header(&headers, "authorization").expect("signed");
    assert!(auth.contains("/ap-guangzhou/s3/aws4_request"), "{auth}");
    // HTTPS: TLS guards the body, so no SHA-256 of it is computed.
    assert_eq!(
        header(&headers, "x-amz-content-sha256"),
        Some("UNSIGNED-PAYLOAD")
    );
    // Unless payload_signing = "always".
    let target = cos_target();
    let (_, headers, _) = capture_put_with(target, PayloadSigning::Always, false).await;
    assert_eq!(
        header(&headers, "x-amz-content-sha256"),
        Some("b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9")
    );
    assert!(!err.to_string().contains("very-secret-key"));
    assert!(!auth.contains("very-secret-key"));
}

/// A conditional create carries COS's own overwrite guard to COS hosts only, beside
/// `If-None-Match`; an unconditional write carries neither.
#[tokio::test]
async fn only_a_conditional_create_to_cos_forbids_overwriting() {
    let other = || {
        let o = StoreEndpoint::parse("http://127.0.0.1:9000").expect("valid");
        override_target(&o)
    };
    let guards = |headers: &[(String, String)]| {
        (
            header(headers, "x-cos-forbid-overwrite").map(str::to_string),
            header(headers, "if-none-match").map(str::to_string),
        )
    };
    let (_, headers, _) = capture_put_with(cos_target(), PayloadSigning::Auto, true).await;
    assert_eq!(guards(&headers), (Some("true".into()), Some("*".into())));
    let (_, headers, _) = capture_put_with(cos_target(), PayloadSigning::Auto, false).await;
    assert_eq!(guards(&headers), (None, None));
    let (_, headers, _) = capture_put_with(other(), PayloadSigning::Auto, true).await;
    assert_eq!(guards(&headers), (None, Some("*".into())));
}

/// The uploader's default for a rule in a known COS region: that region's COS endpoint.
fn cos_target() -> Target {
    resolve_target(
        None,
        &[],
        None,
        false,
        ChecksumChoice::Auto,
        "",
        "ap-guangzhou",
    )
    .expect("COS region")
}

/// `o` for every rule, path style, the default checksum choice.
fn override_target(o: &StoreEndpoint) -> Target {
    resolve_target(
        Some(o),
        &[],
        None,
        true,
        ChecksumChoice::Auto,
        "",
        "ap-guangzhou",
    )
    .expect("ok")
}

#[tokio::test]
async fn other_s3_put_carries_crc32c_and_no_md5_nor_chunked_body() {
    let o = StoreEndpoint::parse("http://127.0.0.1:9000").expect("valid");
    let target = override_target(&o);
    let (_, headers, _) = capture_put(target).await;
    assert_eq!(
        header(&headers, "x-amz-checksum-crc32c"),
        Some(checksum_crc32c(b"hello world").as_str())
    );
    // The well-known CRC32C of "hello world" is 0xc99465aa.
    assert_eq!(checksum_crc32c(b"hello world"), "yZRlqg==");
    assert_eq!(header(&headers, "content-md5"), None);
    assert_eq!(header(&headers, "content-length"), Some("11"));
    assert_eq!(header(&headers, "content-encoding"), None);
    assert_eq!(header(&headers, "x-amz-trailer"), None);
    // Plain HTTP: the payload stays signed (a CRC32C alone could be forged in transit).
    assert_eq!(
        header(&headers, "x-amz-content-sha256"),
        Some("b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9")
    );

    let md5 = ChecksumChoice::parse("md5").expect("valid");
    let target = resolve_target(Some(&o), &[], None, true, md5, "", "").expect("ok");
    let (_, headers, _) = capture_put(target).await;
    assert_eq!(
        header(&headers, "content-md5"),
        Some(content_md5(b"hello world").as_str())
    );
    assert_eq!(header(&headers, "x-amz-checksum-crc32c"), None);
}

#[tokio::test]
async fn override_endpoint_uses_path_style_when_configured() {
    let o = StoreEndpoint::parse("http://127.0.0.1:9000").expect("valid");
    let target = override_target(&o);
    let (uri, _, _) = capture_put(target).await;
    assert!(
        uri.starts_with("http://127.0.0.1:9000/examplebucket-1250000000/orders/2026/"),
        "{uri}"
    );
    let target = resolve_target(
        None,
        &["http://minio.local:9000".to_string()],
        None,
        false,
        ChecksumChoice::Auto,
        "http://minio.local:9000",
        "us-east-1",
    )
    .expect("ok");
    let (uri, _, _) = capture_put(target).await;
    assert!(
        uri.starts_with("http://examplebucket-1250000000.minio.local:9000/orders/"),
        "{uri}"
    );
}

/// The single PUT is only for objects up to the multipart threshold: a larger one is a
/// caller's mistake (it belongs to the resumable multipart upload), refused before a byte
/// of it is buffered or a request is sent.
#[tokio::test]
async fn put_object_refuses_an_object_above_the_multipart_threshold() {
    let o = StoreEndpoint::parse("http://127.0.0.1:9000").expect("valid");
    let Target::S3(target) = override_target(&o) else {
        panic!("S3 target expected")
    };
    let capture = Capture::default();
    let config = client_config(&shared(), &target)
        .interceptor(capture.clone())
        .build();
    // A threshold of 11 bytes: "hello world" is the largest object one PutObject takes.
    let store = S3Store::from_client_config(config, &target, 5 << 20, 11);
    let mut req = PutRequest {
        bucket: "examplebucket-1250000000".into(),
        key: "orders/big.jsonl.gz".into(),
        metadata: Vec::new(),
        content_type: "application/gzip".into(),
        total_len: 12,
        if_absent: false,
    };
    let untouched: Body = futures::stream::poll_fn(|_| -> std::task::Poll<Option<_>> {
        panic!("the body of a refused object must not be read")
    })
    .boxed();
    let err = store
        .put_object(&req, untouched)
        .await
        .expect_err("above the threshold");
    assert!(
        matches!(
            err,
            UploadError::TooLargeForSinglePut {
                len: 12,
                threshold: 11
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("multipart upload"), "{err}");
    assert!(
        capture.0.lock().expect("test mutex").is_empty(),
        "nothing sent"
    );

    // At the threshold itself it is one PutObject (stopped by the interceptor).
    req.total_len = 11;
    store
        .put_object(&req, body(vec![b"hello ", b"world"]))
        .await
        .expect_err("the interceptor stops the request");
    let (uri, headers) = capture
        .0
        .lock()
        .expect("test mutex")
        .pop()
        .expect("one request");
    assert!(uri.contains("/orders/big.jsonl.gz?x-id=PutObject"), "{uri}");
    assert_eq!(header(&headers, "content-length"), Some("11"));
}

#[tokio::test]
async fn part_reader_fills_each_part_into_a_returned_buffer() {
    let buffers = PartBuffers::new(4, 2);
    let mut r = PartReader::new(body(vec![b"ab", b"cdef", b"ghij"]), buffers.clone());
    let first = r.next_part(4).await.expect("ok").expect("a part");
    assert_eq!(first, Bytes::from_static(b"abcd"));
    let memory = first.as_ptr();
    buffers.give_back(first);
    let second = r.next_part(4).await.expect("ok").expect("a part");
    assert_eq!(second, Bytes::from_static(b"efgh"));
    assert_eq!(
        second.as_ptr(),
        memory,
        "the first part's buffer is filled again"
    );
    assert_eq!(
        r.next_part(4).await.expect("ok"),
        Some(Bytes::from_static(b"ij"))
    );
    assert_eq!(r.next_part(4).await.expect("ok"), None);
}

#[tokio::test]
async fn part_reader_cuts_exact_parts_and_reports_body_errors() {
    let mut r = PartReader::new(body(vec![b"abc", b"defg", b"h"]), pool());
    assert_eq!(
        r.next_part(3).await.expect("ok"),
        Some(Bytes::from_static(b"abc"))
    );
    assert_eq!(
        r.next_part(3).await.expect("ok"),
        Some(Bytes::from_static(b"def"))
    );
    assert_eq!(
        r.next_part(3).await.expect("ok"),
        Some(Bytes::from_static(b"gh"))
    );
    assert_eq!(r.next_part(3).await.expect("ok"), None);

    let failing: Body = futures::stream::iter(vec![
        Ok(Bytes::from_static(b"abc")),
        Err(UploadError::Integrity("bad crc".into())),
    ])
    .boxed();
    let mut r = PartReader::new(failing, pool());
    assert_eq!(
        r.next_part(3).await.expect("ok"),
        Some(Bytes::from_static(b"abc"))
    );
    assert!(matches!(
        r.next_part(3).await,
        Err(UploadError::Integrity(_))
    ));

    assert!(PartReader::new(body(vec![b"abcd"]), pool())
        .read_to_end(3)
        .await
        .is_err());
    assert_eq!(
        PartReader::new(body(vec![b"ab", b"c"]), pool())
            .read_to_end(3)
            .await
            .expect("fits"),
        Bytes::from_static(b"abc")
    );
}

/// A loopback "store" that answers every request with `status` (and an S3 error body), for as
/// long as the returned task runs; its endpoint URL.
async fn answering(status: &'static str) -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Enough to take the request head and the small body; the answer does not
                // depend on them.
                let mut buf = vec![0u8; 64 * 1024];
                let _ = tokio::time::timeout(Duration::from_millis(200), conn.read(&mut buf)).await;
                let body = "<Error><Code>Refused</Code><Message>by the test</Message></Error>";
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok((url, task))
}

async fn put_to(endpoint: String) -> UploadError {
    let target = S3Target {
        endpoint,
        region: "us-east-1".into(),
        path_style: true,
        checksum: RequestChecksum::Crc32c,
    };
    // One attempt: the SDK's retries would only slow the test down.
    let config = client_config(&shared(), &target)
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .build();
    let store = S3Store::from_client_config(config, &target, 8 << 20, 8 << 20);
    let req = PutRequest {
        bucket: "bucket".into(),
        key: "k".into(),
        metadata: Vec::new(),
        content_type: "application/gzip".into(),
        total_len: 11,
        if_absent: false,
    };
    store
        .put_object(&req, body(vec![b"hello ", b"world"]))
        .await
        .expect_err("the store refuses or cannot be reached")
}

/// What the readiness probes call "store unreachable": no answer, or a failure on the store's
/// side; a refusal is an answer.
#[tokio::test]
async fn store_errors_tell_an_unreachable_store_from_a_refusal() -> std::io::Result<()> {
    let (refusing, task) = answering("403 Forbidden").await?;
    let err = put_to(refusing).await;
    assert!(matches!(err, UploadError::Store { .. }), "{err:?}");
    assert!(err.to_string().contains("HTTP 403"), "{err}");
    task.abort();

    let (failing, task) = answering("503 Service Unavailable").await?;
    let err = put_to(failing).await;
    assert!(
        matches!(err, UploadError::StoreUnreachable { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("HTTP 503"), "{err}");
    task.abort();

    // A store that hangs up on every connection (kept bound, so no other process can answer).
    let hanging_up = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", hanging_up.local_addr()?);
    let task = tokio::spawn(async move {
        while let Ok((conn, _)) = hanging_up.accept().await {
            drop(conn);
        }
    });
    let err = put_to(url).await;
    assert!(
        matches!(err, UploadError::StoreUnreachable { .. }),
        "{err:?}"
    );
    task.abort();
    Ok(())
}
