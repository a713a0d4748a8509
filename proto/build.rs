//! Generates the gRPC code into OUT_DIR. protoc comes from `PROTOC` (set for the whole workspace
//! by `.cargo/config.toml`) or, failing that, from the protoc-bin-vendored crate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // Edition 2021: set_var is safe; build scripts are single-threaded.
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    println!("cargo:rerun-if-env-changed=PROTOC");
    println!("cargo:rerun-if-changed=protos");
    tonic_prost_build::configure()
        // Segment chunks stay `Bytes` from the socket to the part buffer (no copy per chunk).
        .bytes(".tdmq_backup.v1.SegmentChunk.data")
        // Messages with a secret field get a hand-written Debug (src/redacted_debug.rs).
        .skip_debug([".tdmq_backup.v1.RuleSpec"])
        // What ctl prints with `--output json` is these messages as they are: one definition
        // of the fields, in the .proto, so the JSON cannot drift from the wire.
        .type_attribute(".tdmq_backup.v1.Rule", "#[derive(serde::Serialize)]")
        .type_attribute(".tdmq_backup.v1.RuleStatus", "#[derive(serde::Serialize)]")
        .type_attribute(".tdmq_backup.v1.StatusReply", "#[derive(serde::Serialize)]")
        .type_attribute(".tdmq_backup.v1.LogEntry", "#[derive(serde::Serialize)]")
        .type_attribute(".tdmq_backup.v1.SegmentInfo", "#[derive(serde::Serialize)]")
        .type_attribute(
            ".tdmq_backup.v1.UploaderStatusReply",
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
