//! What the uploader reports over its own gRPC service: counters, uploads in flight, the last
//! error and whether the ingester is reachable; and, for `/metrics` only, the same counters per
//! rule with the time of each rule's last stored object. Error texts come from `UploadError`,
//! which holds no credentials.
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
    /// Per ingester URL: `None` while it answers, else why it does not (or `not contacted yet`).
    ingesters: BTreeMap<String, Option<String>>,
    /// Per ingester URL, the rules it ran at its last listing.
    running: BTreeMap<String, Vec<String>>,
    segments_uploaded: u64,
    bytes_uploaded: u64,
    upload_failures: u64,
    last_error: String,
    last_error_at: String,
    /// By (ingester URL, rule, segment number): two ingesters may number their segments of one
    /// rule alike.
    in_flight: BTreeMap<(String, String, u64), InFlight>,
    /// Per rule, for `/metrics`; a rule the ingester no longer runs is dropped
    /// ([`StatusState::retain_rules`]). The totals above keep counting what it did.
    rules: BTreeMap<String, RuleCounters>,
}

/// One rule's share of the counters, since the uploader started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleCounters {
    pub segments_uploaded: u64,
    pub bytes_uploaded: u64,
    pub upload_failures: u64,
    /// Fenced segments whose key another ingester's object held (see `upload::Placed`).
    pub fence_conflicts: u64,
    /// Unix ms of the last object this uploader stored and committed for the rule; 0: none yet.
    pub last_stored_ms: u64,
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

    /// The ingesters this uploader serves (the `ingester` key), each not contacted yet.
    pub fn expect_ingesters(&self, urls: &[String]) {
        let mut inner = self.lock();
        for url in urls {
            inner
                .ingesters
                .entry(url.clone())
                .or_insert_with(|| Some("not contacted yet".into()));
        }
        self.readiness.set(INGESTER_UNREACHABLE, false);
    }

    pub fn ingester_reachable(&self, url: &str) {
        let mut inner = self.lock();
        inner.ingesters.insert(url.to_string(), None);
        let all = inner.ingesters.values().all(Option::is_none);
        self.readiness.set(INGESTER_UNREACHABLE, all);
    }

    pub fn ingester_unreachable(&self, url: &str, error: &str) {
        let mut inner = self.lock();
        inner
            .ingesters
            .insert(url.to_string(), Some(error.to_string()));
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
    pub fn upload_started(
        &self,
        ingester: &str,
        seg: &SegmentInfo,
        attempt: u32,
    ) -> Arc<AtomicU64> {
        let bytes_sent = Arc::new(AtomicU64::new(0));
        self.lock().in_flight.insert(
            (ingester.to_string(), seg.rule.clone(), seg.segment_no),
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

    pub fn upload_finished(&self, ingester: &str, rule: &str, segment_no: u64) {
        self.lock()
            .in_flight
            .remove(&(ingester.to_string(), rule.to_string(), segment_no));
    }

    /// One of `rule`'s segments is stored and committed.
    pub fn record_stored(&self, rule: &str, bytes: u64) {
        let mut inner = self.lock();
        inner.segments_uploaded += 1;
        inner.bytes_uploaded += bytes;
        let counters = inner.rules.entry(rule.to_string()).or_default();
        counters.segments_uploaded += 1;
        counters.bytes_uploaded += bytes;
        counters.last_stored_ms = now_millis();
    }

    /// A fenced segment of `rule` found its key holding another ingester's object.
    pub fn record_fenced(&self, rule: &str) {
        self.lock()
            .rules
            .entry(rule.to_string())
            .or_default()
            .fence_conflicts += 1;
    }

    /// An attempt at one of `rule`'s segments failed (it is retried).
    pub fn record_failure(&self, rule: &str, error: &str) {
        let mut inner = self.lock();
        inner.upload_failures += 1;
        inner.last_error = error.to_string();
        inner.last_error_at = rfc3339_from_millis(now_millis());
        inner
            .rules
            .entry(rule.to_string())
            .or_default()
            .upload_failures += 1;
    }

    /// `ingester` runs `running` now: drops the per-rule counters of every rule that no
    /// ingester runs any more, so that a deleted rule's series leave `/metrics`.
    pub fn retain_rules(&self, ingester: &str, running: &[String]) {
        let mut inner = self.lock();
        inner.running.insert(ingester.to_string(), running.to_vec());
        // Until every ingester has said what it runs, a rule may be another's.
        if inner
            .ingesters
            .keys()
            .any(|url| !inner.running.contains_key(url))
        {
            return;
        }
        let any: std::collections::HashSet<String> =
            inner.running.values().flatten().cloned().collect();
        inner.rules.retain(|name, _| any.contains(name));
    }

    /// The per-rule counters, by rule name.
    pub fn rule_counters(&self) -> BTreeMap<String, RuleCounters> {
        self.lock().rules.clone()
    }

    pub fn snapshot(&self) -> UploaderStatusReply {
        let inner = self.lock();
        UploaderStatusReply {
            version: proto::VERSION.to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            ingester_reachable: !inner.ingesters.is_empty()
                && inner.ingesters.values().all(Option::is_none),
            ingester_error: ingester_error(&inner.ingesters),
            segments_uploaded: inner.segments_uploaded,
            bytes_uploaded: inner.bytes_uploaded,
            upload_failures: inner.upload_failures,
            last_error: inner.last_error.clone(),
            last_error_at: inner.last_error_at.clone(),
            in_flight: inner
                .in_flight
                .iter()
                .map(|((_, rule, segment_no), f)| UploadInFlight {
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
    restore: Option<Arc<crate::restore::RestoreManager>>,
    /// Verify (absent in tests of the status alone).
    auditor: Option<crate::audit::Auditor>,
}

impl UploaderService {
    pub fn new(state: Arc<StatusState>) -> UploaderService {
        UploaderService {
            state,
            restore: None,
            auditor: None,
        }
    }

    pub fn with_auditor(mut self, auditor: crate::audit::Auditor) -> UploaderService {
        self.auditor = Some(auditor);
        self
    }

    pub fn with_restore(mut self, restore: Arc<crate::restore::RestoreManager>) -> UploaderService {
        self.restore = Some(restore);
        self
    }

    fn restore(&self) -> Result<&Arc<crate::restore::RestoreManager>, tonic::Status> {
        self.restore
            .as_ref()
            .ok_or_else(|| tonic::Status::unimplemented("restore is not served here"))
    }
}

type RestoreResult = Result<tonic::Response<proto::v1::RestoreReply>, tonic::Status>;

fn restore_reply(job: proto::v1::RestoreJob) -> RestoreResult {
    Ok(tonic::Response::new(proto::v1::RestoreReply {
        job: Some(job),
    }))
}

#[tonic::async_trait]
impl proto::Uploader for UploaderService {
    async fn uploader_status(
        &self,
        _request: tonic::Request<UploaderStatusRequest>,
    ) -> Result<tonic::Response<UploaderStatusReply>, tonic::Status> {
        Ok(tonic::Response::new(self.state.snapshot()))
    }

    async fn create_restore(
        &self,
        request: tonic::Request<proto::v1::CreateRestoreRequest>,
    ) -> RestoreResult {
        restore_reply(self.restore()?.create(request.into_inner()).await?)
    }

    async fn list_restores(
        &self,
        _request: tonic::Request<proto::v1::ListRestoresRequest>,
    ) -> Result<tonic::Response<proto::v1::ListRestoresReply>, tonic::Status> {
        Ok(tonic::Response::new(proto::v1::ListRestoresReply {
            jobs: self.restore()?.list(),
        }))
    }

    async fn get_restore(
        &self,
        request: tonic::Request<proto::v1::RestoreJobRef>,
    ) -> RestoreResult {
        restore_reply(self.restore()?.get(&request.into_inner().job)?)
    }

    async fn pause_restore(
        &self,
        request: tonic::Request<proto::v1::RestoreJobRef>,
    ) -> RestoreResult {
        restore_reply(
            self.restore()?
                .control(&request.into_inner().job, "pause")?,
        )
    }

    async fn resume_restore(
        &self,
        request: tonic::Request<proto::v1::RestoreJobRef>,
    ) -> RestoreResult {
        restore_reply(
            self.restore()?
                .control(&request.into_inner().job, "resume")?,
        )
    }

    async fn cancel_restore(
        &self,
        request: tonic::Request<proto::v1::RestoreJobRef>,
    ) -> RestoreResult {
        restore_reply(
            self.restore()?
                .control(&request.into_inner().job, "cancel")?,
        )
    }

    type VerifyStream = crate::audit::VerifyStream;

    async fn verify(
        &self,
        request: tonic::Request<proto::v1::VerifyRequest>,
    ) -> Result<tonic::Response<Self::VerifyStream>, tonic::Status> {
        let auditor = self
            .auditor
            .as_ref()
            .ok_or_else(|| tonic::Status::unimplemented("verify is not served here"))?;
        auditor
            .verify(request.into_inner())
            .await
            .map(tonic::Response::new)
    }
}

/// Why the ingesters do not all answer: the one ingester's error as it is, or with several,
/// each failing one's as `URL: error`, `; `-separated. Empty while they all answer.
fn ingester_error(ingesters: &BTreeMap<String, Option<String>>) -> String {
    let failing = ingesters
        .iter()
        .filter_map(|(url, error)| Some((url, error.as_ref()?)));
    if ingesters.len() == 1 {
        return failing.map(|(_, e)| e.clone()).next().unwrap_or_default();
    }
    failing
        .map(|(url, e)| format!("{url}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
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
        let sent = s.upload_started("http://a", &seg, 2);
        sent.fetch_add(4, Ordering::Relaxed);
        let snap = s.snapshot();
        assert_eq!(snap.in_flight.len(), 1);
        assert_eq!(snap.in_flight[0].bytes_sent, 4);
        assert_eq!(snap.in_flight[0].attempt, 2);
        s.upload_finished("http://a", "orders", 3);
        s.record_stored("orders", 10);
        s.record_failure("orders", "PutObject failed: boom");
        s.ingester_unreachable("http://a", "connection refused");
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
        s.ingester_reachable("http://a");
        assert_eq!(reason(&s), Ok(()));
        s.store_unreachable();
        assert_eq!(reason(&s), Err(STORE_UNREACHABLE.to_string()));
        s.ingester_unreachable("http://a", "connection refused");
        assert_eq!(
            reason(&s),
            Err(format!("{INGESTER_UNREACHABLE}, {STORE_UNREACHABLE}"))
        );
        s.store_reachable();
        assert_eq!(reason(&s), Err(INGESTER_UNREACHABLE.to_string()));
        s.ingester_reachable("http://a");
        assert_eq!(reason(&s), Ok(()));
    }

    #[test]
    fn counts_per_rule_and_forgets_rules_the_ingester_no_longer_runs() {
        let s = StatusState::new("file:///tmp/x".into());
        let before = now_millis();
        s.record_stored("a", 10);
        s.record_stored("a", 5);
        s.record_stored("b", 7);
        s.record_failure("b", "boom");
        let rules = s.rule_counters();
        assert_eq!(
            (rules["a"].segments_uploaded, rules["a"].bytes_uploaded),
            (2, 15)
        );
        assert_eq!(rules["a"].upload_failures, 0);
        assert_eq!(rules["b"].upload_failures, 1);
        assert!(rules["a"].last_stored_ms >= before);
        s.retain_rules("http://a", &["b".to_string()]);
        assert_eq!(s.rule_counters().keys().collect::<Vec<_>>(), ["b"]);
        // The totals still count what the deleted rule's segments were.
        let snap = s.snapshot();
        assert_eq!((snap.segments_uploaded, snap.bytes_uploaded), (3, 22));
    }

    #[test]
    fn with_several_ingesters_ready_only_while_every_one_answers_and_the_error_names_it() {
        let s = StatusState::new("file:///tmp/x".into());
        let urls = ["http://a:1".to_string(), "http://b:2".to_string()];
        s.expect_ingesters(&urls);
        let reason = |s: &StatusState| s.readiness().check().map_err(|e| e.to_string());
        s.ingester_reachable(&urls[0]);
        assert_eq!(reason(&s), Err(INGESTER_UNREACHABLE.to_string()));
        let snap = s.snapshot();
        assert!(!snap.ingester_reachable);
        assert_eq!(snap.ingester_error, "http://b:2: not contacted yet");
        s.ingester_reachable(&urls[1]);
        assert_eq!(reason(&s), Ok(()));
        assert!(s.snapshot().ingester_reachable);
        s.ingester_unreachable(&urls[1], "connection refused");
        assert_eq!(
            s.snapshot().ingester_error,
            "http://b:2: connection refused"
        );
        assert_eq!(reason(&s), Err(INGESTER_UNREACHABLE.to_string()));

        // A rule is forgotten only when no ingester runs it any more; the same segment number
        // of one rule on two ingesters is two uploads in flight.
        s.record_stored("only-a", 1);
        s.record_stored("only-b", 1);
        s.retain_rules(&urls[0], &["only-a".to_string()]);
        s.retain_rules(&urls[1], &["only-b".to_string()]);
        assert_eq!(s.rule_counters().len(), 2);
        let seg = SegmentInfo {
            rule: "r".into(),
            segment_no: 1,
            ..SegmentInfo::default()
        };
        s.upload_started(&urls[0], &seg, 1);
        s.upload_started(&urls[1], &seg, 1);
        assert_eq!(s.snapshot().in_flight.len(), 2);
        s.upload_finished(&urls[0], "r", 1);
        assert_eq!(s.snapshot().in_flight.len(), 1);
    }
}
