//! The checked-in CRD manifests are exactly what `crdgen` writes: a change to the types that
//! is not regenerated fails here (and so in CI).
#![cfg(feature = "kube")]

#[test]
fn checked_in_crds_match_the_types() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in ["manifests/crds", "charts/llm-gateway/crds"] {
        for (name, yaml) in llm_gateway_crds::crd_manifests() {
            let path = root.join(dir).join(name);
            let on_disk = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                on_disk == yaml,
                "{} is out of date: run `cargo run -p llm-gateway-crds --features crdgen --bin crdgen`",
                path.display()
            );
        }
    }
}
