//! Generates the Tally API from `proto/` with tonic-prost-build, using the vendored
//! protoc so no system install is needed, and emits one file descriptor set that
//! every service registers for server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/tally/common/v1/common.proto",
        "proto/tally/user/v1/user.proto",
        "proto/tally/poll/v1/poll.proto",
        "proto/tally/events/v1/events.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let mut cfg = tonic_prost_build::Config::new();
    cfg.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("tally_descriptor.bin"))
        .compile_with_config(cfg, &protos, &["proto"])?;
    Ok(())
}
