//! Writes the CRD manifests into `manifests/crds/` and `charts/llm-gateway/crds/` (or the
//! folders given as arguments). CI fails when the checked-in files differ from what this
//! writes (`crds/tests/manifests.rs`).

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dirs: Vec<PathBuf> = match std::env::args()
        .skip(1)
        .map(PathBuf::from)
        .collect::<Vec<_>>()
    {
        d if d.is_empty() => vec![
            root.join("manifests/crds"),
            root.join("charts/llm-gateway/crds"),
        ],
        d => d,
    };
    for dir in dirs {
        std::fs::create_dir_all(&dir).expect("create the folder");
        for (name, yaml) in llm_gateway_crds::crd_manifests() {
            let path = dir.join(name);
            std::fs::write(&path, yaml).expect("write the CRD");
            println!("wrote {}", path.display());
        }
    }
}
