//! The uploader's `state_dir` as the build before format stamps wrote it (the committed fixture
//! `tests/fixtures/uploader-state-v1`: one multipart upload in progress) is opened as format 1,
//! stamped, and its resume record is still read.

use std::path::Path;

use edge::dir_format::open;
use proto::types::dir_format::{DirKind, Opening};
use uploader::multipart::Journal;

#[tokio::test]
async fn a_state_dir_from_before_format_stamps_keeps_its_multipart_records() -> anyhow::Result<()> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/uploader-state-v1/multipart/fixture-orders-1.json");
    let state = tempfile::tempdir()?;
    std::fs::create_dir_all(state.path().join("multipart"))?;
    std::fs::copy(
        &fixture,
        state.path().join("multipart/fixture-orders-1.json"),
    )?;

    assert_eq!(open(state.path(), DirKind::UploaderState)?, Opening::Stamp);
    assert_eq!(
        open(state.path(), DirKind::UploaderState)?,
        Opening::UpToDate
    );

    let record = Journal::new(state.path())
        .load("fixture-orders", 1)
        .await
        .ok_or_else(|| anyhow::anyhow!("the format-1 resume record was not read"))?;
    assert_eq!(record.upload_id, "fixture-upload-1");
    assert_eq!(record.identity.bucket, "fixture-bucket");
    assert_eq!(record.identity.part_size, 2048);
    assert_eq!(record.parts.len(), 1);
    assert_eq!(record.parts[0].part_number, 1);
    Ok(())
}

#[test]
fn an_ingester_data_dir_given_as_state_dir_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    assert_eq!(open(dir.path(), DirKind::IngesterData)?, Opening::Stamp);
    let err = open(dir.path(), DirKind::UploaderState).expect_err("the other daemon's directory");
    assert!(
        err.to_string()
            .contains("state_dir points at another daemon's directory"),
        "{err}"
    );
    Ok(())
}
