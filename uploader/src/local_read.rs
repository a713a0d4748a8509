//! Reading a sealed segment from the ingester's own disk, for an uploader on the same host.
//!
//! ListSealed names each sealed file's absolute path. When `read_local` is on and that path opens
//! here with the announced length, the segment's bytes come from the file instead of the
//! ingester's ReadSegment stream: the same bytes without the ingester reading them for us and
//! the HTTP/2 hop in between. Nothing else changes: the body still passes through
//! [`crate::verify`] (length and CRC32C against what the ingester sealed), and listing and
//! committing stay RPCs.
//!
//! Only a path shaped like the ingester's own sealed files is opened
//! (`…/segments/{rule}/{segment_no:020}.jsonl[.gz|.zst]`, no `..`), never through a symlink in place
//! of the file (`O_NOFOLLOW`), and, when `ingester_data_dir` is configured, only if the file's
//! directory really is `{ingester_data_dir}/segments/{rule}` once every symlink on the way is
//! resolved: the uploader trusts its ingester with object content, not with choosing which of
//! this host's files to read.
//!
//! A path that does not open (another host, another user, the file moved into quarantine) just
//! means ReadSegment. A local attempt that fails for any reason is remembered, and that segment's
//! next attempts use ReadSegment: the ingester checks the file itself there and quarantines it if
//! it is damaged, which a reader on the side cannot do.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use proto::types::segment_files;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use futures::StreamExt;
use proto::types::{Compression, Format};
use proto::v1::SegmentInfo;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::UploadError;
use crate::store::Body;

/// Bytes per read; chunks are copied into part buffers right away, so this only sets the number
/// of read calls.
const CHUNK: usize = 1 << 20;
/// Chunks read ahead of the upload.
const AHEAD: usize = 2;

type SegmentId = (String, u64);

pub struct LocalReads {
    enabled: bool,
    /// `ingester_data_dir`: sealed files are read only from its `segments/` directory.
    data_dir: Option<PathBuf>,
    /// Segments whose local read failed once; they are read over gRPC from then on.
    refused: Mutex<HashSet<SegmentId>>,
    /// Whether the first file that opened, and the first that did not, were logged (once per
    /// process at info: per segment it would flood the log of a split deployment).
    told_local: AtomicBool,
    told_remote: AtomicBool,
}

impl LocalReads {
    pub fn new(enabled: bool) -> LocalReads {
        LocalReads {
            enabled,
            data_dir: None,
            refused: Mutex::new(HashSet::new()),
            told_local: AtomicBool::new(false),
            told_remote: AtomicBool::new(false),
        }
    }

    /// Reads only files under `dir/segments/` (the ingester's `data_dir` as this host sees it).
    pub fn with_ingester_data_dir(mut self, dir: Option<PathBuf>) -> LocalReads {
        self.data_dir = dir;
        self
    }

    /// The segment's bytes from the file the ingester named, or `None` when they are to come
    /// over ReadSegment (turned off, no path, refused before, or the file is not the one
    /// announced here).
    pub async fn open(&self, seg: &SegmentInfo) -> Option<Body> {
        if !self.enabled || seg.file_path.is_empty() || self.lock().contains(&id_of(seg)) {
            return None;
        }
        let path = PathBuf::from(&seg.file_path);
        if let Err(reason) = check_shape(&path, seg) {
            tracing::warn!(path = %seg.file_path, %reason, "the ingester named a file that is not a sealed segment; using ReadSegment");
            return None;
        }
        let expected_len = seg.file_bytes;
        let data_dir = self.data_dir.clone();
        let rule = seg.rule.clone();
        let opened = tokio::task::spawn_blocking(move || {
            if let Some(data_dir) = &data_dir {
                check_under(&path, data_dir, &rule)?;
            }
            open_checked(&path, expected_len).map(|file| (file, path))
        })
        .await;
        match opened {
            Ok(Ok((file, path))) => {
                if !self.told_local.swap(true, Ordering::Relaxed) {
                    tracing::info!(path = %seg.file_path, "reading sealed segments from the ingester's disk on this host");
                }
                Some(stream_file(file, path))
            }
            Ok(Err(reason)) => {
                if self.told_remote.swap(true, Ordering::Relaxed) {
                    tracing::debug!(path = %seg.file_path, %reason, "sealed file not readable here; using ReadSegment");
                } else {
                    tracing::info!(path = %seg.file_path, %reason, "sealed file not readable on this host (fine when the ingester runs elsewhere); streaming segments over ReadSegment");
                }
                None
            }
            Err(err) => {
                tracing::debug!(error = %err, "opening the sealed file failed; using ReadSegment");
                None
            }
        }
    }

    /// A local attempt of `seg` failed: its next attempts use ReadSegment.
    pub fn refuse(&self, seg: &SegmentInfo) {
        if self.enabled && self.lock().insert(id_of(seg)) {
            tracing::info!(rule = %seg.rule, segment = seg.segment_no, "reading the segment over gRPC from now on");
        }
    }

    /// `seg` is done with (committed or quarantined).
    pub fn forget(&self, seg: &SegmentInfo) {
        self.lock().remove(&id_of(seg));
    }

    fn lock(&self) -> MutexGuard<'_, HashSet<SegmentId>> {
        self.refused
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn id_of(seg: &SegmentInfo) -> SegmentId {
    (seg.rule.clone(), seg.segment_no)
}

/// `path` must be where the ingester keeps `seg`'s sealed file:
/// `/…/segments/{rule}/{segment_no:020}{.jsonl.gz|.jsonl.zst|.jsonl}`, absolute, without `..`.
fn check_shape(path: &Path, seg: &SegmentInfo) -> Result<(), String> {
    if !path.is_absolute() {
        return Err("not an absolute path".into());
    }
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err("the path has a `..` component".into());
    }
    let file_name = Format::from_key(&seg.object_key).segment_file_name(
        Compression::from_content_encoding(&seg.content_encoding),
        seg.segment_no,
    );
    let rule_dir = path.parent();
    let segments_dir = rule_dir.and_then(Path::parent);
    if name_of(Some(path)) != Some(file_name.as_str())
        || name_of(rule_dir) != Some(seg.rule.as_str())
        || name_of(segments_dir) != Some(segment_files::SEGMENTS_DIR)
    {
        return Err(format!("expected …/segments/{}/{file_name}", seg.rule));
    }
    Ok(())
}

/// The last component of `path`, if it is UTF-8.
fn name_of(path: Option<&Path>) -> Option<&str> {
    path.and_then(Path::file_name).and_then(|n| n.to_str())
}

/// `path`'s directory, with every symlink resolved, must be `{data_dir}/segments/{rule}` (also
/// resolved): a symlinked directory on the way cannot lead the read elsewhere.
fn check_under(path: &Path, data_dir: &Path, rule: &str) -> Result<(), String> {
    let expected = std::fs::canonicalize(data_dir)
        .map_err(|e| format!("ingester_data_dir {}: {e}", data_dir.display()))?;
    let expected = segment_files::segments_dir(&expected, rule);
    let actual = path
        .parent()
        .map(std::fs::canonicalize)
        .transpose()
        .map_err(|e| e.to_string())?;
    if actual.as_deref() != Some(expected.as_path()) {
        return Err(format!(
            "not under ingester_data_dir (expected {}/…)",
            expected.display()
        ));
    }
    Ok(())
}

/// Opens `path` if it is a regular file of `expected_len` bytes; otherwise says why not.
fn open_checked(path: &Path, expected_len: u64) -> Result<File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NOFOLLOW: a symlink put in place of the sealed file fails to open (ELOOP) instead of
    // handing over whatever it points at. O_NONBLOCK: a FIFO there cannot block the open; it is
    // then refused as not a regular file (reads of regular files ignore the flag).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() != expected_len {
        return Err(format!(
            "{} bytes, the segment announced {expected_len}",
            meta.len()
        ));
    }
    Ok(file)
}

/// The file's bytes in [`CHUNK`]s, read on a blocking thread a little ahead of the consumer.
fn stream_file(mut file: File, path: PathBuf) -> Body {
    let (tx, rx) = mpsc::channel::<Result<Bytes, UploadError>>(AHEAD);
    tokio::task::spawn_blocking(move || loop {
        let mut chunk = Vec::with_capacity(CHUNK);
        // `take` + `read_to_end` fills the spare capacity without zeroing it first.
        let item = match (&mut file).take(CHUNK as u64).read_to_end(&mut chunk) {
            Ok(0) => return,
            Ok(_) => Ok(Bytes::from(chunk)),
            Err(err) => Err(UploadError::io("reading sealed file", path.clone(), err)),
        };
        let failed = item.is_err();
        // A closed channel means the upload stopped reading: nothing left to do.
        if tx.blocking_send(item).is_err() || failed {
            return;
        }
    });
    ReceiverStream::new(rx).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(path: &Path, len: u64) -> SegmentInfo {
        SegmentInfo {
            rule: "r1".into(),
            segment_no: 7,
            file_bytes: len,
            file_path: path.display().to_string(),
            content_encoding: "gzip".into(),
            ..SegmentInfo::default()
        }
    }

    /// `dir/segments/r1/00000000000000000007.jsonl.gz`, holding `data`.
    fn sealed_file(dir: &Path, data: &[u8]) -> PathBuf {
        let rule_dir = dir.join("segments").join("r1");
        std::fs::create_dir_all(&rule_dir).expect("mkdir");
        let path = rule_dir.join("00000000000000000007.jsonl.gz");
        std::fs::write(&path, data).expect("write");
        path
    }

    async fn read_all(body: Body) -> Vec<u8> {
        let chunks: Vec<Bytes> = body.map(|c| c.expect("chunk")).collect::<Vec<_>>().await;
        chunks.concat()
    }

    #[tokio::test]
    async fn reads_the_named_file_in_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data: Vec<u8> = (0..(CHUNK * 2 + 123)).map(|i| (i % 251) as u8).collect();
        let path = sealed_file(dir.path(), &data);
        let reads = LocalReads::new(true);
        let body = reads
            .open(&segment(&path, data.len() as u64))
            .await
            .expect("opens");
        assert_eq!(read_all(body).await, data);
    }

    #[tokio::test]
    async fn falls_back_when_off_missing_wrong_size_or_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = sealed_file(dir.path(), b"hello\n");
        let seg = segment(&path, 6);
        assert!(LocalReads::new(false).open(&seg).await.is_none());
        let reads = LocalReads::new(true);
        assert!(reads.open(&segment(&path, 7)).await.is_none());
        std::fs::remove_file(&path).expect("rm");
        assert!(reads.open(&seg).await.is_none(), "gone");
        let path = sealed_file(dir.path(), b"hello\n");
        assert!(reads
            .open(&SegmentInfo {
                file_path: "segments/r1/00000000000000000007.jsonl.gz".into(),
                ..seg.clone()
            })
            .await
            .is_none());
        // A directory where the file should be.
        let odd = tempfile::tempdir().expect("tempdir");
        let as_dir = odd.path().join("segments/r1/00000000000000000007.jsonl.gz");
        std::fs::create_dir_all(&as_dir).expect("mkdir");
        assert!(reads.open(&segment(&as_dir, 6)).await.is_none());
        assert_eq!(path.display().to_string(), seg.file_path);
        assert!(reads.open(&seg).await.is_some());
        reads.refuse(&seg);
        assert!(reads.open(&seg).await.is_none());
        reads.forget(&seg);
        assert!(reads.open(&seg).await.is_some());
    }
}

#[cfg(test)]
mod symlink_tests {
    use super::*;

    fn segment(path: &Path, len: u64) -> SegmentInfo {
        SegmentInfo {
            rule: "r1".into(),
            segment_no: 7,
            file_bytes: len,
            file_path: path.display().to_string(),
            content_encoding: "gzip".into(),
            ..SegmentInfo::default()
        }
    }

    #[tokio::test]
    async fn a_symlink_in_place_of_the_sealed_file_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret.txt");
        std::fs::write(&secret, b"not a segment\n").expect("write");
        let rule_dir = dir.path().join("segments").join("r1");
        std::fs::create_dir_all(&rule_dir).expect("mkdir");
        let link = rule_dir.join("00000000000000000007.jsonl.gz");
        std::os::unix::fs::symlink(&secret, &link).expect("symlink");
        let reads = LocalReads::new(true);
        assert!(
            reads.open(&segment(&link, 14)).await.is_none(),
            "a symlink named like a sealed file was followed"
        );
    }

    #[tokio::test]
    async fn with_ingester_data_dir_only_files_under_it_are_read() {
        let ingester = tempfile::tempdir().expect("tempdir");
        let other = tempfile::tempdir().expect("tempdir");
        let write = |root: &Path| {
            let rule_dir = root.join("segments").join("r1");
            std::fs::create_dir_all(&rule_dir).expect("mkdir");
            let path = rule_dir.join("00000000000000000007.jsonl.gz");
            std::fs::write(&path, b"hello\n").expect("write");
            path
        };
        let inside = write(ingester.path());
        let outside = write(other.path());
        let reads =
            LocalReads::new(true).with_ingester_data_dir(Some(ingester.path().to_path_buf()));
        assert!(reads.open(&segment(&inside, 6)).await.is_some());
        assert!(
            reads.open(&segment(&outside, 6)).await.is_none(),
            "a file outside ingester_data_dir was read"
        );
        // A symlinked directory inside the data dir that leads outside it does not count.
        std::fs::remove_dir_all(ingester.path().join("segments")).expect("rm");
        std::os::unix::fs::symlink(
            other.path().join("segments"),
            ingester.path().join("segments"),
        )
        .expect("symlink");
        assert!(
            reads.open(&segment(&inside, 6)).await.is_none(),
            "a symlinked directory led outside ingester_data_dir"
        );
    }
}

#[cfg(test)]
mod shape_tests {
    use super::*;

    fn seg(rule: &str, no: u64, encoding: &str) -> SegmentInfo {
        SegmentInfo {
            rule: rule.into(),
            segment_no: no,
            content_encoding: encoding.into(),
            ..SegmentInfo::default()
        }
    }

    #[test]
    fn only_paths_shaped_like_the_ingesters_sealed_files_are_read() {
        let ok = |p: &str, s: &SegmentInfo| check_shape(Path::new(p), s).is_ok();
        let gz = seg("orders", 42, "gzip");
        assert!(ok(
            "/var/lib/i/segments/orders/00000000000000000042.jsonl.gz",
            &gz
        ));
        let plain = seg("orders", 42, "identity");
        assert!(ok("/d/segments/orders/00000000000000000042.jsonl", &plain));
        let zst = seg("orders", 42, "zstd");
        assert!(ok(
            "/d/segments/orders/00000000000000000042.jsonl.zst",
            &zst
        ));
        // A zstd segment's path must end .jsonl.zst: not the gzip or the plain file's name.
        assert!(!ok(
            "/d/segments/orders/00000000000000000042.jsonl.gz",
            &zst
        ));
        assert!(!ok("/d/segments/orders/00000000000000000042.jsonl", &zst));
        for bad in [
            "/etc/shadow",
            "/root/.ssh/id_ed25519",
            "segments/orders/00000000000000000042.jsonl.gz",
            "/d/segments/orders/00000000000000000043.jsonl.gz",
            "/d/segments/orders/00000000000000000042.jsonl",
            "/d/segments/other/00000000000000000042.jsonl.gz",
            "/d/spool/orders/00000000000000000042.jsonl.gz",
            "/d/segments/orders/../orders/00000000000000000042.jsonl.gz",
            "/d/segments/x/../orders/00000000000000000042.jsonl.gz",
        ] {
            assert!(!ok(bad, &gz), "{bad}");
        }
    }
}
