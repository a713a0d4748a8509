//! What the uploader reports over its own gRPC service: counters, uploads in flight, the last
//! error and whether the ingester is reachable. Error texts come from `UploadError`, which holds
//! no credentials.
//!
//! Also its readiness for the probes (`grpc.health.v1`, `/readyz`): ready while the ingester
//! answers ListSealed and the object store is not known to be unreachable. Both are learnt from
//! the pipeline's own requests: the ingester's from every listing (about once a second, or
//! after the listing backoff while it fails), the store's from each upload, whose last request
//! either reached the store (even one it refused) or did not ([`UploadError::StoreUnreachable`],
//! a file:// store's disk failing). Before the first upload the store counts as reachable: an
//! idle uploader has nothing to learn it from, and is not kept out of service for that.
//!
//! [`UploadError::StoreUnreachable`]: crate::UploadError::StoreUnreachable

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use proto::types::time::{now_millis, rfc3339_from_millis};
use proto::v1::{SegmentInfo, UploadInFlight, UploaderStatusReply, UploaderStatusRequest};

#[derive(Default)]
struct Inner {
    ingester_reachable: bool,
    ingester_error: String,
    segments_uploaded: u64,
    bytes_uploaded: u64,
    upload_failures: u64,
    last_error: String,
    last_error_at: String,
    in_flight: BTreeMap<(String, u64), InFlight>,
}

struct InFlight {
    object_key: String,
    file_bytes: u64,
    attempt: u32,
    started_at: String,
    bytes_sent: Arc<AtomicU64>,
}

/// What the probes say while the ingester does not answer.
pub const INGESTER_UNREACHABLE: &str = "ingester unreachable";
/// ... while the last request to the object store could not reach it.
pub const STORE_UNREACHABLE: &str = "store unreachable";

pub struct StatusState {
    started: Instant,
    readiness: edge::health::Readiness,
    store: String,
    inner: Mutex<Inner>,
    /// Seconds from the first byte read to the commit, per stored segment; `/metrics` only.
    upload_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl StatusState {
    pub fn new(store: String) -> StatusState {
        let readiness = edge::health::Readiness::new(&[INGESTER_UNREACHABLE]);
        readiness.set(STORE_UNREACHABLE, true);
        StatusState {
            started: Instant::now(),
            readiness,
            store,
            inner: Mutex::new(Inner::default()),
            upload_seconds: crate::metrics::upload_seconds_histogram(),
        }
    }

    /// One stored and committed segment took this long (the histogram of `/metrics`).
    pub fn observe_upload(&self, took: std::time::Duration) {
        self.upload_seconds.observe(took.as_secs_f64());
    }

    /// A handle on the live histogram (clones share the counts).
    pub fn upload_seconds(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.upload_seconds.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Counters stay meaningful even if a holder panicked; never take the daemon down for it.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The uploader's readiness, for the probes.
    pub fn readiness(&self) -> &edge::health::Readiness {
        &self.readiness
    }

    pub fn ingester_reachable(&self) {
        let mut inner = self.lock();
        inner.ingester_reachable = true;
        inner.ingester_error.clear();
        self.readiness.set(INGESTER_UNREACHABLE, true);
    }

    pub fn ingester_unreachable(&self, error: &str) {
        let mut inner = self.lock();
        inner.ingester_reachable = false;
        inner.ingester_error = error.to_string();
        self.readiness.set(INGESTER_UNREACHABLE, false);
    }

    /// A request reached the object store (whatever it answered).
    pub fn store_reachable(&self) {
        self.readiness.set(STORE_UNREACHABLE, true);
    }

    /// A request could not reach the object store: not ready ([`STORE_UNREACHABLE`]) until
    /// one does.
    pub fn store_unreachable(&self) {
        self.readiness.set(STORE_UNREACHABLE, false);
    }

    /// Registers an upload; the returned counter is advanced as bytes stream to the store.
    pub fn upload_started(&self, seg: &SegmentInfo, attempt: u32) -> Arc<AtomicU64> {
        let bytes_sent = Arc::new(AtomicU64::new(0));
        self.lock().in_flight.insert(
            (seg.rule.clone(), seg.segment_no),
            InFlight {
                object_key: seg.object_key.clone(),
                file_bytes: seg.file_bytes,
                attempt,
                started_at: rfc3339_from_millis(now_millis()),
                bytes_sent: bytes_sent.clone(),
            },
        );
        bytes_sent
    }

    pub fn upload_finished(&self, rule: &str, segment_no: u64) {
        self.lock()
            .in_flight
            .remove(&(rule.to_string(), segment_no));
    }

    pub fn record_stored(&self, bytes: u64) {
        let mut inner = self.lock();
        inner.segments_uploaded += 1;
        inner.bytes_uploaded += bytes;
    }

    pub fn record_failure(&self, error: &str) {
        let mut inner = self.lock();
        inner.upload_failures += 1;
        inner.last_error = error.to_string();
        inner.last_error_at = rfc3339_from_millis(now_millis());
    }

    pub fn snapshot(&self) -> UploaderStatusReply {
        let inner = self.lock();
        UploaderStatusReply {
            version: proto::VERSION.to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            ingester_reachable: inner.ingester_reachable,
            ingester_error: inner.ingester_error.clone(),
            segments_uploaded: inner.segments_uploaded,
            bytes_uploaded: inner.bytes_uploaded,
            upload_failures: inner.upload_failures,
            last_error: inner.last_error.clone(),
            last_error_at: inner.last_error_at.clone(),
            in_flight: inner
                .in_flight
                .iter()
                .map(|((rule, segment_no), f)| UploadInFlight {
                    rule: rule.clone(),
                    segment_no: *segment_no,
                    object_key: f.object_key.clone(),
                    bytes_sent: f.bytes_sent.load(Ordering::Relaxed),
                    file_bytes: f.file_bytes,
                    attempt: f.attempt,
                    started_at: f.started_at.clone(),
                })
                .collect(),
            store: self.store.clone(),
        }
    }
}

/// The `Uploader` gRPC service.
pub struct UploaderService {
    state: Arc<StatusState>,
}

impl UploaderService {
    pub fn new(state: Arc<StatusState>) -> UploaderService {
        UploaderService { state }
    }
}

#[tonic::async_trait]
impl proto::Uploader for UploaderService {
    async fn uploader_status(
        &self,
        _request: tonic::Request<UploaderStatusRequest>,
    ) -> Result<tonic::Response<UploaderStatusReply>, tonic::Status> {
        Ok(tonic::Response::new(self.state.snapshot()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_in_flight_and_counters() {
        let s = StatusState::new("file:///tmp/x".into());
        let seg = SegmentInfo {
            rule: "orders".into(),
            segment_no: 3,
            object_key: "k".into(),
            file_bytes: 10,
            ..SegmentInfo::default()
        };
        let sent = s.upload_started(&seg, 2);
        sent.fetch_add(4, Ordering::Relaxed);
        let snap = s.snapshot();
        assert_eq!(snap.in_flight.len(), 1);
        assert_eq!(snap.in_flight[0].bytes_sent, 4);
        assert_eq!(snap.in_flight[0].attempt, 2);
        s.upload_finished("orders", 3);
        s.record_stored(10);
        s.record_failure("PutObject failed: boom");
        s.ingester_unreachable("connection refused");
        let snap = s.snapshot();
        assert!(snap.in_flight.is_empty());
        assert_eq!(
            (
                snap.segments_uploaded,
                snap.bytes_uploaded,
                snap.upload_failures
            ),
            (1, 10, 1)
        );
        assert_eq!(snap.last_error, "PutObject failed: boom");
        assert!(!snap.ingester_reachable);
        assert_eq!(snap.store, "file:///tmp/x");
    }

    #[test]
    fn ready_while_the_ingester_answers_and_the_store_is_not_known_unreachable() {
        let s = StatusState::new("file:///tmp/x".into());
        let reason = |s: &StatusState| s.readiness().check().map_err(|e| e.to_string());
        // Not before the ingester first answered; the store counts as reachable until a
        // request says otherwise.
        assert_eq!(reason(&s), Err(INGESTER_UNREACHABLE.to_string()));
        s.ingester_reachable();
        assert_eq!(reason(&s), Ok(()));
        s.store_unreachable();
        assert_eq!(reason(&s), Err(STORE_UNREACHABLE.to_string()));
        s.ingester_unreachable("connection refused");
        assert_eq!(
            reason(&s),
            Err(format!("{INGESTER_UNREACHABLE}, {STORE_UNREACHABLE}"))
        );
        s.store_reachable();
        assert_eq!(reason(&s), Err(INGESTER_UNREACHABLE.to_string()));
        s.ingester_reachable();
        assert_eq!(reason(&s), Ok(()));
    }
}
