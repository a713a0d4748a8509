//! Generates the gRPC code and the encoded file descriptor set into OUT_DIR. protoc comes from `PROTOC` (set for the whole workspace
//! by `.cargo/config.toml`) or, failing that, from the protoc-bin-vendored crate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // Edition 2021: set_var is safe; build scripts are single-threaded.
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    println!("cargo:rerun-if-env-changed=PROTOC");
    println!("cargo:rerun-if-changed=protos");
    let out_dir =
        std::path::PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    tonic_prost_build::configure()
        // The daemons' server reflection answers from this (`proto::FILE_DESCRIPTOR_SET`), so
        // grpcurl can list and call them without the .proto files.
        .file_descriptor_set_path(out_dir.join("tdmq_backup_descriptor.bin"))
        // Segment chunks stay `Bytes` from the socket to the part buffer (no copy per chunk).
        .bytes(".tdmq_backup.v1.SegmentChunk.data")
        // Messages with a secret field get a hand-written Debug (src/redacted_debug.rs).
        .skip_debug([
            ".tdmq_backup.v1.RuleSpec",
            ".tdmq_backup.v1.RestoreTargetRequest",
        ])
        // What ctl prints with `--output json` is these messages as they are: one definition
        // of the fields, in the .proto, so the JSON cannot drift from the wire.
        .type_attribute(".tdmq_backup.v1.Rule", "#[derive(serde::Serialize)]")
        .type_attribute(".tdmq_backup.v1.RuleStatus", "#[derive(serde::Serialize)]")
        .type_attribute(".tdmq_backup.v1.StatusReply", "#[derive(serde::Serialize)]")
        .type_attribute(".tdmq_backup.v1.LogEntry", "#[derive(serde::Serialize)]")
        .type_attribute(".tdmq_backup.v1.SegmentInfo", "#[derive(serde::Serialize)]")
        .type_attribute(
            ".tdmq_backup.v1.PartitionSpan",
            "#[derive(serde::Serialize)]",
        )
        .type_attribute(
            ".tdmq_backup.v1.UploaderStatusReply",
            "#[derive(serde::Serialize)]",
        )
        .type_attribute(".tdmq_backup.v1.RestoreJob", "#[derive(serde::Serialize)]")
        .type_attribute(
            ".tdmq_backup.v1.RestorePartition",
            "#[derive(serde::Serialize)]",
        )
        .type_attribute(
            ".tdmq_backup.v1.UploadInFlight",
            "#[derive(serde::Serialize)]",
        )
        // The rules of a StatusReply get their own key in `status --output json`.
        .field_attribute(".tdmq_backup.v1.StatusReply.rules", "#[serde(skip)]")
        .compile_protos(
            &[
                "protos/tdmq_backup/v1/ingester.proto",
                "protos/tdmq_backup/v1/uploader.proto",
            ],
            &["protos"],
        )?;
    Ok(())
}
