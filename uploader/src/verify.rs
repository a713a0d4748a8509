//! Checks a segment's bytes while they stream through: the length must equal `file_bytes` and
//! the CRC32C must equal `content_crc32c`. A mismatch is yielded as the stream's last item, so
//! a store (which always reads its body to the end before making the object visible) fails the
//! upload instead of storing damaged data.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::StreamExt;

use crate::error::UploadError;
use crate::store::Body;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub len: u64,
    pub crc32c: u32,
}

/// `content_crc32c` as the ingester writes it: 8 lowercase hex digits (`{:08x}`).
pub fn parse_crc32c(hex: &str) -> Result<u32, UploadError> {
    if hex.len() != 8 {
        return Err(UploadError::Segment(format!(
            "content_crc32c {hex:?} is not 8 hex digits"
        )));
    }
    u32::from_str_radix(hex, 16)
        .map_err(|_| UploadError::Segment(format!("content_crc32c {hex:?} is not 8 hex digits")))
}

pub fn crc32c_hex(data: &[u8]) -> String {
    format!("{:08x}", crc32c::crc32c(data))
}

struct State {
    inner: Body,
    len: u64,
    crc: u32,
    done: bool,
}

/// Wraps `inner`; `progress` counts the bytes passed on (for the status reply).
pub fn verifying(inner: Body, expected: Expected, progress: Arc<AtomicU64>) -> Body {
    let state = State {
        inner,
        len: 0,
        crc: 0,
        done: false,
    };
    futures::stream::unfold(state, move |mut st| {
        let progress = progress.clone();
        async move {
            if st.done {
                return None;
            }
            match st.inner.next().await {
                Some(Ok(chunk)) => {
                    st.len += chunk.len() as u64;
                    if st.len > expected.len {
                        // Stop early: no point sending bytes that cannot be right.
                        st.done = true;
                        let err = UploadError::Integrity(format!(
                            "received more than the announced {} bytes",
                            expected.len
                        ));
                        return Some((Err(err), st));
                    }
                    st.crc = crc32c::crc32c_append(st.crc, &chunk);
                    progress.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    Some((Ok(chunk), st))
                }
                Some(Err(err)) => {
                    st.done = true;
                    Some((Err(err), st))
                }
                None => {
                    st.done = true;
                    if st.len != expected.len {
                        let err = UploadError::Integrity(format!(
                            "received {} bytes, the segment announced {}",
                            st.len, expected.len
                        ));
                        Some((Err(err), st))
                    } else if st.crc != expected.crc32c {
                        let err = UploadError::Integrity(format!(
                            "content crc32c is {:08x}, the segment announced {:08x}",
                            st.crc, expected.crc32c
                        ));
                        Some((Err(err), st))
                    } else {
                        None
                    }
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    async fn collect(chunks: Vec<&'static [u8]>, expected: Expected) -> Vec<Result<Bytes, String>> {
        let body =
            futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c)))).boxed();
        verifying(body, expected, Arc::new(AtomicU64::new(0)))
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
            .await
    }

    #[tokio::test]
    async fn passes_matching_content() {
        let crc = crc32c::crc32c(b"hello world");
        let out = collect(
            vec![b"hello ", b"world"],
            Expected {
                len: 11,
                crc32c: crc,
            },
        )
        .await;
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(Result::is_ok));
    }

    #[tokio::test]
    async fn fails_on_wrong_crc_length_or_excess() {
        let crc = crc32c::crc32c(b"hello world");
        let out = collect(
            vec![b"hello ", b"w0rld"],
            Expected {
                len: 11,
                crc32c: crc,
            },
        )
        .await;
        assert!(out
            .last()
            .is_some_and(|r| r.as_ref().is_err_and(|e| e.contains("crc32c"))));
        let out = collect(
            vec![b"hello "],
            Expected {
                len: 11,
                crc32c: crc,
            },
        )
        .await;
        assert!(out
            .last()
            .is_some_and(|r| r.as_ref().is_err_and(|e| e.contains("6 bytes"))));
        let out = collect(
            vec![b"hello ", b"world", b"!"],
            Expected {
                len: 11,
                crc32c: crc,
            },
        )
        .await;
        assert_eq!(out.len(), 3);
        assert!(out[2].as_ref().is_err_and(|e| e.contains("more than")));
    }

    #[test]
    fn crc_hex_round_trips() {
        let hex = crc32c_hex(b"abc");
        assert_eq!(hex.len(), 8);
        assert_eq!(parse_crc32c(&hex).expect("valid"), crc32c::crc32c(b"abc"));
        assert!(parse_crc32c("xyz").is_err());
        assert!(parse_crc32c("0000000g").is_err());
    }
}
