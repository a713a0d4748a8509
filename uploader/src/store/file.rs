//! The embedded store, `file://DIR`, for trying tdmq-backup without COS.
//!
//! Object `K` of bucket `B` is the file `DIR/B/K`, so users can browse their backup with plain
//! tools. It is written as `DIR/B/.tmp/<random>`, fsynced and renamed into place, so a crash never
//! leaves a partial object under its real name. Metadata lives apart, in `DIR/.meta/B/K.json`,
//! to keep the bucket tree holding only objects.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use futures::StreamExt;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::{Body, ListedObject, ObjectHead, PutOutcome, PutRequest};
use crate::error::UploadError;

const TMP_DIR: &str = ".tmp";
const META_DIR: &str = ".meta";

#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
}

/// What `DIR/.meta/B/K.json` holds.
#[derive(Debug, Serialize, Deserialize)]
struct MetaFile {
    size: u64,
    etag: String,
    content_type: String,
    metadata: BTreeMap<String, String>,
}

impl FileStore {
    pub fn new(root: impl Into<PathBuf>) -> FileStore {
        FileStore { root: root.into() }
    }

    pub fn object_path(&self, bucket: &str, key: &str) -> Result<PathBuf, UploadError> {
        check_bucket(bucket)?;
        check_key(key)?;
        Ok(self.root.join(bucket).join(key))
    }

    fn meta_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root
            .join(META_DIR)
            .join(bucket)
            .join(format!("{key}.json"))
    }

    pub async fn put_object(
        &self,
        req: &PutRequest,
        mut body: Body,
    ) -> Result<PutOutcome, UploadError> {
        let object_path = self.object_path(&req.bucket, &req.key)?;
        // Checked before the metadata is written, then again by the link below (which a
        // second writer of the key cannot pass): one host's uploaders meet here.
        if req.if_absent && tokio::fs::try_exists(&object_path).await.unwrap_or(false) {
            return Err(UploadError::KeyTaken { op: "writing" });
        }
        let tmp_dir = self.root.join(&req.bucket).join(TMP_DIR);
        create_dir(&tmp_dir).await?;
        let tmp_path = tmp_dir.join(format!("{:016x}.part", rand::random::<u64>()));

        let written = async {
            let mut file = tokio::fs::File::create(&tmp_path)
                .await
                .map_err(|e| UploadError::io("creating", &tmp_path, e))?;
            let mut md5 = Md5::new();
            let mut size = 0u64;
            // Read to the very end: the last item is where a bad length or checksum shows up.
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                md5.update(&chunk);
                size += chunk.len() as u64;
                file.write_all(&chunk)
                    .await
                    .map_err(|e| UploadError::io("writing", &tmp_path, e))?;
            }
            file.sync_all()
                .await
                .map_err(|e| UploadError::io("syncing", &tmp_path, e))?;
            Ok::<_, UploadError>((size, format!("\"{:x}\"", md5.finalize())))
        }
        .await;
        let (size, etag) = match written {
            Ok(v) => v,
            Err(err) => {
                // Nothing half-written may stay behind, not even in .tmp.
                let _ = tokio::fs::remove_file(&tmp_path).await;
                return Err(err);
            }
        };

        // Metadata first: once the object is visible its metadata is already there.
        let meta = MetaFile {
            size,
            etag: etag.clone(),
            content_type: req.content_type.clone(),
            metadata: req.metadata.iter().cloned().collect(),
        };
        let meta_json = serde_json::to_vec_pretty(&meta).map_err(|e| UploadError::Store {
            op: "writing metadata",
            message: e.to_string(),
        })?;
        let meta_path = self.meta_path(&req.bucket, &req.key);
        let meta_tmp = self
            .root
            .join(META_DIR)
            .join(TMP_DIR)
            .join(format!("{:016x}.json", rand::random::<u64>()));
        let meta_result = write_atomically(&meta_tmp, &meta_path, &meta_json).await;
        if let Err(err) = meta_result {
            let _ = tokio::fs::remove_file(&tmp_path).await;
            return Err(err);
        }

        if let Some(parent) = object_path.parent() {
            create_dir(parent).await?;
        }
        if req.if_absent {
            // A link, unlike a rename, never replaces an existing file.
            let linked = tokio::fs::hard_link(&tmp_path, &object_path).await;
            let _ = tokio::fs::remove_file(&tmp_path).await;
            match linked {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(UploadError::KeyTaken { op: "writing" })
                }
                Err(e) => return Err(UploadError::io("linking into", &object_path, e)),
            }
        } else if let Err(e) = tokio::fs::rename(&tmp_path, &object_path).await {
            let _ = tokio::fs::remove_file(&tmp_path).await;
            return Err(UploadError::io("renaming into", &object_path, e));
        }
        sync_parent(&object_path).await;
        Ok(PutOutcome { etag })
    }

    pub async fn head_object(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<ObjectHead>, UploadError> {
        let object_path = self.object_path(bucket, key)?;
        let size = match tokio::fs::metadata(&object_path).await {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(UploadError::io("reading", &object_path, e)),
        };
        let meta_path = self.meta_path(bucket, key);
        let meta: Option<MetaFile> = match tokio::fs::read(&meta_path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(UploadError::io("reading", &meta_path, e)),
        };
        // An object copied in by hand has no metadata; report it with an empty map.
        let (etag, metadata) = meta.map(|m| (m.etag, m.metadata)).unwrap_or_default();
        Ok(Some(ObjectHead {
            size,
            etag,
            metadata,
        }))
    }
}

impl FileStore {
    /// Every object whose key starts with `prefix`, ordered by key; the ETag from the metadata
    /// file (empty for an object copied in by hand).
    pub async fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<ListedObject>, UploadError> {
        check_bucket(bucket)?;
        let bucket_dir = self.root.join(bucket);
        // Walk from the deepest folder the prefix names whole.
        let start = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let mut out = Vec::new();
        let mut dirs = vec![(bucket_dir.join(start), start.to_string())];
        while let Some((dir, rel)) = dirs.pop() {
            let mut read = match tokio::fs::read_dir(&dir).await {
                Ok(read) => read,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(UploadError::io("listing", &dir, e)),
            };
            while let Some(item) = read
                .next_entry()
                .await
                .map_err(|e| UploadError::io("listing", &dir, e))?
            {
                let name = item.file_name().to_string_lossy().into_owned();
                let key = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                // The store's own scratch space is no object.
                if rel.is_empty() && name == TMP_DIR {
                    continue;
                }
                let file_type = item
                    .file_type()
                    .await
                    .map_err(|e| UploadError::io("listing", item.path(), e))?;
                if file_type.is_dir() {
                    if key.starts_with(prefix) || prefix.starts_with(&key) {
                        dirs.push((item.path(), key));
                    }
                } else if file_type.is_file() && key.starts_with(prefix) {
                    let size = item
                        .metadata()
                        .await
                        .map_err(|e| UploadError::io("reading", item.path(), e))?
                        .len();
                    let etag = match tokio::fs::read(self.meta_path(bucket, &key)).await {
                        Ok(bytes) => serde_json::from_slice::<MetaFile>(&bytes)
                            .map(|m| m.etag)
                            .unwrap_or_default(),
                        Err(_) => String::new(),
                    };
                    out.push(ListedObject { key, size, etag });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    pub async fn get_object(&self, bucket: &str, key: &str) -> Result<Option<Body>, UploadError> {
        let path = self.object_path(bucket, key)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(UploadError::io("opening", &path, e)),
        };
        let stream = futures::stream::unfold(Some((file, path)), |state| async move {
            use tokio::io::AsyncReadExt as _;
            let (mut file, path) = state?;
            let mut buf = vec![0u8; 256 << 10];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(bytes::Bytes::from(buf)), Some((file, path))))
                }
                Err(e) => Some((Err(UploadError::io("reading", &path, e)), None)),
            }
        });
        Ok(Some(stream.boxed()))
    }

    pub async fn delete_object(&self, bucket: &str, key: &str) -> Result<(), UploadError> {
        let path = self.object_path(bucket, key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(UploadError::io("deleting", &path, e)),
        }
        let _ = tokio::fs::remove_file(self.meta_path(bucket, key)).await;
        Ok(())
    }
}

async fn create_dir(dir: &Path) -> Result<(), UploadError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| UploadError::io("creating directory", dir, e))
}

async fn write_atomically(tmp: &Path, dest: &Path, data: &[u8]) -> Result<(), UploadError> {
    for dir in [tmp.parent(), dest.parent()].into_iter().flatten() {
        create_dir(dir).await?;
    }
    let result = async {
        let mut file = tokio::fs::File::create(tmp)
            .await
            .map_err(|e| UploadError::io("creating", tmp, e))?;
        file.write_all(data)
            .await
            .map_err(|e| UploadError::io("writing", tmp, e))?;
        file.sync_all()
            .await
            .map_err(|e| UploadError::io("syncing", tmp, e))?;
        tokio::fs::rename(tmp, dest)
            .await
            .map_err(|e| UploadError::io("renaming into", dest, e))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(tmp).await;
    }
    sync_parent(dest).await;
    result
}

/// Makes the rename itself durable. Best effort: some filesystems refuse to fsync a directory.
async fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        if let Ok(dir) = tokio::fs::File::open(parent).await {
            let _ = dir.sync_all().await;
        }
    }
}

fn check_bucket(bucket: &str) -> Result<(), UploadError> {
    let bad = |reason| {
        Err(UploadError::InvalidKey {
            key: bucket.to_string(),
            reason,
        })
    };
    if bucket.is_empty() {
        return bad("empty bucket name");
    }
    // A leading dot would collide with the store's own .meta and .tmp directories.
    if bucket.starts_with('.') || bucket.contains(['/', '\\', '\0']) {
        return bad("bucket names may not start with '.' or hold '/', '\\' or NUL");
    }
    Ok(())
}

/// Keys become paths, so anything that could leave the bucket directory is refused.
fn check_key(key: &str) -> Result<(), UploadError> {
    let bad = |reason| {
        Err(UploadError::InvalidKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("empty key");
    }
    if key.contains(['\\', '\0']) {
        return bad("keys may not hold '\\' or NUL");
    }
    let segments: Vec<&str> = key.split('/').collect();
    if segments.contains(&"..") {
        return bad("keys may not hold '..' components");
    }
    if segments.iter().any(|s| s.is_empty() || *s == ".") {
        return bad("keys may not start or end with '/', or hold '//' or '.' components");
    }
    if segments.first().is_some_and(|s| *s == TMP_DIR) {
        return bad("the top-level .tmp directory is reserved");
    }
    // Belt and braces: the path must be plain names only.
    let all_normal = Path::new(key)
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    if !all_normal {
        return bad("keys must be relative paths of plain names");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn request(key: &str, len: u64) -> PutRequest {
        PutRequest {
            bucket: "backup-1250000000".into(),
            key: key.into(),
            metadata: vec![
                ("rule".into(), "orders".into()),
                ("message-count".into(), "2".into()),
            ],
            content_type: "application/x-ndjson".into(),
            total_len: len,
            if_absent: false,
        }
    }

    fn body(items: Vec<Result<Bytes, UploadError>>) -> Body {
        futures::stream::iter(items).boxed()
    }

    #[tokio::test]
    async fn a_conditional_create_leaves_another_writers_object_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(dir.path());
        let key = "public/default/orders/2026/11/24/02/r1-20261124T020000Z-7_5_0_-1.jsonl";
        let mut req = request(key, 3);
        req.if_absent = true;
        store
            .put_object(&req, body(vec![Ok(Bytes::from_static(b"one"))]))
            .await
            .expect("the key is free");
        let err = store
            .put_object(&req, body(vec![Ok(Bytes::from_static(b"two"))]))
            .await
            .expect_err("taken");
        assert!(matches!(err, UploadError::KeyTaken { .. }), "{err}");
        let path = dir.path().join("backup-1250000000").join(key);
        assert_eq!(std::fs::read(&path).expect("object file"), b"one");
        // An ordinary put still replaces (a retry of the same segment).
        store
            .put_object(&request(key, 3), body(vec![Ok(Bytes::from_static(b"two"))]))
            .await
            .expect("replaced");
        assert_eq!(std::fs::read(&path).expect("object file"), b"two");
    }

    #[tokio::test]
    async fn writes_and_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(dir.path());
        let key = "public/default/orders/2026/11/24/02/seg-1.jsonl";
        let out = store
            .put_object(
                &request(key, 8),
                body(vec![
                    Ok(Bytes::from_static(b"{\"a\":1}\n")),
                    Ok(Bytes::new()),
                ]),
            )
            .await
            .expect("stored");
        let path = dir.path().join("backup-1250000000").join(key);
        assert_eq!(std::fs::read(&path).expect("object file"), b"{\"a\":1}\n");
        assert_eq!(out.etag, format!("\"{:x}\"", Md5::digest(b"{\"a\":1}\n")));

        let head = store
            .head_object("backup-1250000000", key)
            .await
            .expect("head")
            .expect("exists");
        assert_eq!(head.size, 8);
        assert_eq!(head.etag, out.etag);
        assert_eq!(
            head.metadata.get("message-count").map(String::as_str),
            Some("2")
        );
        // The bucket tree holds only the object (plus the empty .tmp), metadata lives apart.
        assert!(dir
            .path()
            .join(".meta/backup-1250000000")
            .join(format!("{key}.json"))
            .is_file());
        let tmp_entries = std::fs::read_dir(dir.path().join("backup-1250000000/.tmp"))
            .expect("tmp")
            .count();
        assert_eq!(tmp_entries, 0);

        assert_eq!(
            store
                .head_object("backup-1250000000", "missing")
                .await
                .expect("head"),
            None
        );
    }

    #[tokio::test]
    async fn failed_body_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(dir.path());
        let err = store
            .put_object(
                &request("a/b.jsonl", 6),
                body(vec![
                    Ok(Bytes::from_static(b"abc")),
                    Err(UploadError::Integrity("crc".into())),
                ]),
            )
            .await
            .expect_err("body failed");
        assert!(matches!(err, UploadError::Integrity(_)));
        assert!(!dir.path().join("backup-1250000000/a/b.jsonl").exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("backup-1250000000/.tmp"))
                .expect("tmp")
                .count(),
            0
        );
        assert_eq!(
            store
                .head_object("backup-1250000000", "a/b.jsonl")
                .await
                .expect("head"),
            None
        );
    }

    #[tokio::test]
    async fn refuses_keys_that_escape() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(dir.path());
        for key in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "",
            ".tmp/x",
            "a\\..\\b",
        ] {
            let err = store
                .put_object(&request(key, 1), body(vec![Ok(Bytes::from_static(b"x"))]))
                .await
                .expect_err(key);
            assert!(
                matches!(err, UploadError::InvalidKey { .. }),
                "{key}: {err}"
            );
        }
        assert!(store.object_path("..", "x").is_err());
        assert!(store.object_path(".meta", "x").is_err());
        assert!(store.object_path("b", "a/..x/ok..").is_ok());
    }
}
