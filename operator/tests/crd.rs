//! The committed CRD must be exactly what the Rust types generate.

#[test]
fn committed_crd_matches_the_rust_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crd.yaml");
    let committed = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let generated = devicelink_operator::crd_yaml();
    assert!(
        committed == generated,
        "deploy/crd.yaml is stale: the DeviceLink types in operator/src/resource.rs changed.\n\
         Regenerate it with `cargo xtask crd` (or `cargo run -p devicelink-operator -- crd > deploy/crd.yaml`) and commit it."
    );
}
