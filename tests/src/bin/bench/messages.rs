//! What the scenarios produce: unique fixed-size text payloads, preloaded in batches.

use std::time::Instant;

use harness::SampleMessage;
use rand::{Rng, SeedableRng};

use crate::{KB, MIB};

/// Fixed-size, text (JSON-ish hex) payloads: realistic for gzip, valid UTF-8 (no base64), unique.
pub struct Payloads {
    noise: Vec<u8>,
}

impl Payloads {
    pub fn new() -> Payloads {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let hex = b"0123456789abcdef";
        let noise = (0..4 * MIB).map(|_| hex[rng.gen_range(0..16)]).collect();
        Payloads { noise }
    }

    pub fn message(&self, index: usize, size: usize) -> SampleMessage {
        let mut payload = format!("{{\"i\":{index},\"d\":\"").into_bytes();
        let body = size.saturating_sub(payload.len() + 2);
        let start = (index.wrapping_mul(7919)) % (self.noise.len() - body.min(self.noise.len()));
        let take = body.min(self.noise.len());
        payload.extend_from_slice(&self.noise[start..start + take]);
        while payload.len() + 2 < size {
            payload.push(b'x');
        }
        payload.extend_from_slice(b"\"}");
        payload.truncate(size.max(1));
        SampleMessage {
            payload,
            key: Some(format!("k{}", index % 16)),
            properties: [("seq".to_string(), index.to_string())].into(),
            event_time: None,
            ..Default::default()
        }
    }
}

/// Produces `count` messages of `size` bytes to `topic` with batching on, in chunks of about
/// 32 MB so the bench itself stays small.
pub async fn preload(url: &str, topic: &str, count: usize, size: usize) -> anyhow::Result<f64> {
    let payloads = Payloads::new();
    let chunk = (32 * MIB / size.max(1)).clamp(1, 50_000);
    let started = Instant::now();
    let mut i = 0;
    while i < count {
        let end = (i + chunk).min(count);
        let messages: Vec<SampleMessage> = (i..end).map(|j| payloads.message(j, size)).collect();
        harness::produce(url, topic, &messages, true).await?;
        i = end;
    }
    Ok(started.elapsed().as_secs_f64())
}

pub fn topic_name(stem: &str) -> String {
    format!(
        "persistent://public/default/{stem}-{}",
        rand::random::<u32>()
    )
}

pub fn size_label(size: usize) -> String {
    match size {
        s if s >= MIB && s % MIB == 0 => format!("{} MiB", s / MIB),
        s if s >= KB && s % KB == 0 => format!("{} KB", s / KB),
        s => format!("{s} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_asked_size_and_are_unique() {
        let p = Payloads::new();
        for size in [100, KB, 10 * KB, 100 * KB, MIB] {
            let a = p.message(1, size);
            let b = p.message(2, size);
            assert_eq!(a.payload.len(), size);
            assert_ne!(a.payload, b.payload);
            assert!(std::str::from_utf8(&a.payload).is_ok());
        }
    }
}
