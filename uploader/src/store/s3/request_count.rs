//! Requests sent to S3, by operation: what the store bills (PUT, POST and LIST cost more than
//! GET and HEAD), and what a fenced rule's conflicts cost (docs/benchmarks.md). An interceptor on
//! every client the router builds counts each attempt as it goes out, a retry included.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::client::orchestrator::Metadata;

/// Shared by every client of one uploader; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RequestCounts(Arc<Mutex<BTreeMap<String, u64>>>);

impl RequestCounts {
    /// Requests so far, by operation name (`PutObject`, `UploadPart`, `HeadObject`…).
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn count(&self, operation: &str) {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match counts.get_mut(operation) {
            Some(n) => *n += 1,
            None => {
                counts.insert(operation.to_string(), 1);
            }
        }
    }
}

impl Intercept for RequestCounts {
    fn name(&self) -> &'static str {
        "request-counts"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        // Every operation of the SDK stores its metadata; "unknown" would only show a change
        // in the SDK, not lose the count.
        let operation = cfg.load::<Metadata>().map_or("unknown", Metadata::name);
        self.count(operation);
        Ok(())
    }
}
