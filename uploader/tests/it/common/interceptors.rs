//! SDK interceptors that record or alter the requests of the store under test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_sdk_s3::config::interceptors::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};

/// Method, URI, lower-cased header names.
pub type Recorded = (String, String, Vec<String>);

/// Records every request the SDK is about to send.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    requests: Arc<Mutex<Vec<Recorded>>>,
    /// Part number and Content-Length of every UploadPart.
    parts: Arc<Mutex<Vec<(u32, u64)>>>,
    /// The SigV4 `SignedHeaders` of every request, in the order sent.
    signed: Arc<Mutex<Vec<Vec<String>>>>,
}

impl Recorder {
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("test mutex").clone()
    }

    /// The requests so far, forgetting them (and their parts).
    pub fn take(&self) -> Vec<Recorded> {
        self.parts.lock().expect("test mutex").clear();
        self.signed.lock().expect("test mutex").clear();
        std::mem::take(&mut *self.requests.lock().expect("test mutex"))
    }

    /// The headers each request so far signed (its `Authorization`'s `SignedHeaders`), in the
    /// order sent.
    pub fn signed_headers(&self) -> Vec<Vec<String>> {
        self.signed.lock().expect("test mutex").clone()
    }

    /// The UploadPart requests so far: part number and Content-Length, in the order sent.
    pub fn part_sizes(&self) -> Vec<(u32, u64)> {
        self.parts.lock().expect("test mutex").clone()
    }
}

impl Intercept for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
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
            .map(|(k, _)| k.to_ascii_lowercase())
            .collect();
        let part_number = req
            .uri()
            .split("partNumber=")
            .nth(1)
            .and_then(|n| n.split('&').next())
            .and_then(|n| n.parse().ok());
        let length = req
            .headers()
            .get("content-length")
            .and_then(|n| n.parse().ok());
        if let (Some(part_number), Some(length), "PUT") = (part_number, length, req.method()) {
            self.parts
                .lock()
                .expect("test mutex")
                .push((part_number, length));
        }
        let signed = req
            .headers()
            .get("authorization")
            .and_then(|auth| auth.split("SignedHeaders=").nth(1))
            .and_then(|rest| rest.split(',').next())
            .map(|list| list.split(';').map(str::to_string).collect())
            .unwrap_or_default();
        self.signed.lock().expect("test mutex").push(signed);
        self.requests.lock().expect("test mutex").push((
            req.method().to_string(),
            req.uri().to_string(),
            headers,
        ));
        Ok(())
    }
}

/// Replaces the integrity header (`content-md5` / `x-amz-checksum-crc32c`) of every request
/// with the checksum of other bytes, before signing: the request is validly signed, and only
/// the store's own check of the bytes can refuse it.
#[derive(Debug, Clone, Default)]
pub struct TamperChecksums;

impl Intercept for TamperChecksums {
    fn name(&self) -> &'static str {
        "tamper-checksums"
    }

    fn modify_before_signing(
        &self,
        context: &mut aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let headers = context.request_mut().headers_mut();
        if headers.contains_key("content-md5") {
            // MD5 of "other bytes", base64.
            headers.insert("content-md5", "0HWGhHTsTyGuGuvIGJ57kA==");
        }
        if headers.contains_key("x-amz-checksum-crc32c") {
            headers.insert("x-amz-checksum-crc32c", "AAAAAA==");
        }
        Ok(())
    }
}

/// Requests between being sent and their response arriving: the most ever open at once. (A
/// request whose transmission fails stays counted; use it where none fail.)
#[derive(Debug, Clone, Default)]
pub struct OpenRequests {
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl OpenRequests {
    pub fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
}

impl Intercept for OpenRequests {
    fn name(&self) -> &'static str {
        "open-requests"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let open = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(open, Ordering::SeqCst);
        Ok(())
    }

    fn read_after_transmit(
        &self,
        _context: &BeforeDeserializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// While armed, every ListParts answer is replaced by an HTTP 200 the SDK cannot read (a root
/// element it does not expect), as a store with its own idea of the format would answer.
#[derive(Debug, Clone, Default)]
pub struct BreakListParts(Arc<std::sync::atomic::AtomicBool>);

impl BreakListParts {
    pub fn arm(&self, on: bool) {
        self.0.store(on, Ordering::SeqCst);
    }
}

impl Intercept for BreakListParts {
    fn name(&self) -> &'static str {
        "break-list-parts"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        // The request is gone by the time the answer arrives: note here what it was.
        let r = context.request();
        if r.method() == "GET" && r.uri().contains("uploadId=") && !r.uri().contains("partNumber=")
        {
            cfg.interceptor_state().store_put(IsListParts);
        }
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        context: &mut aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextMut<
            '_,
        >,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if self.0.load(Ordering::SeqCst) && cfg.load::<IsListParts>().is_some() {
            // The store answered ListParts; only the body changes.
            *context.response_mut().body_mut() = aws_smithy_types::body::SdkBody::from(
                "<?xml version=\"1.0\"?><NotAPartList><Part/></NotAPartList>",
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct IsListParts;

impl aws_smithy_types::config_bag::Storable for IsListParts {
    type Storer = aws_smithy_types::config_bag::StoreReplace<IsListParts>;
}
