//! The gateway's modules form layers: each may use the modules of the layers below it (and of
//! its own layer, without a circle), never those above. A newcomer then knows where a
//! decision of each kind lives, and a change cannot quietly tie two ends of the crate
//! together. This test reads the sources (every `crate::` path outside comments) and fails
//! on a reference that goes up, or on any circle between top-level modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom to top; the README's "Architecture" section describes the same table.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "foundations",
        &[
            "error",
            "wire",
            "clock",
            "catalog",
            "kv",
            "install_crypto",
            "trace_context",
            "threads",
            "alloc",
        ],
    ),
    ("config", &["config"]),
    ("resilience primitives", &["breaker", "deadline", "latency"]),
    ("providers", &["providers"]),
    ("routing", &["models", "router"]),
    (
        "services",
        &[
            "store",
            "bench",
            "cache",
            "ledger",
            "retention",
            "auth",
            "budget",
            "telemetry",
            "admission",
            "admin",
            "workload",
        ],
    ),
    ("state", &["state", "live"]),
    ("pipeline", &["pipeline"]),
    ("api", &["api"]),
    ("assembly", &["app"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&module))
}

/// The top-level module a source file belongs to (`api/chat.rs` → `api`).
fn module_of(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// Top-level modules named by `crate::` paths in `src`, outside comments.
fn references(src: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    // Comments dropped, lines joined: a `use crate::{...}` group may span lines.
    let code: String = src
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    {
        let mut rest = code.as_str();
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a, b::c, d::{e, f}}` on one line: the first segment of each.
                let mut depth = 0;
                let mut item = String::new();
                for ch in group.chars() {
                    match ch {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            push_first(&mut out, &item);
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    item.push(ch);
                }
                push_first(&mut out, &item);
            } else {
                push_first(&mut out, rest);
            }
        }
    }
    out
}

fn push_first(out: &mut BTreeSet<String>, path: &str) {
    let name: String = path
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if !name.is_empty() {
        out.insert(name);
    }
}

fn sources(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, root, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(root).unwrap();
            out.push((module_of(rel), std::fs::read_to_string(&p).unwrap()));
        }
    }
}

/// Module → the modules it uses, for every library module (the binary's `main.rs` and
/// `cli/` sit above everything; `lib.rs` only declares).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &root, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, src) in files {
        if matches!(module.as_str(), "main" | "lib" | "cli") {
            continue;
        }
        let refs = references(&src);
        let entry = g.entry(module.clone()).or_default();
        entry.extend(refs.into_iter().filter(|r| *r != module));
    }
    g
}

#[test]
fn every_module_has_a_layer_and_uses_only_layers_below_or_its_own() {
    let g = graph();
    let mut wrong = Vec::new();
    for (m, uses) in &g {
        let Some(lm) = layer_of(m) else {
            wrong.push(format!("module `{m}` is in no layer: add it to LAYERS"));
            continue;
        };
        for u in uses {
            match layer_of(u) {
                None => wrong.push(format!("`{m}` uses `{u}`, which is in no layer")),
                Some(lu) if lu > lm => wrong.push(format!(
                    "`{m}` ({}) uses `{u}` ({}), a layer above it",
                    LAYERS[lm].0, LAYERS[lu].0
                )),
                _ => {}
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn there_is_no_circle_between_modules() {
    let g = graph();
    // Depth-first search; a back edge is a circle, printed as the path that closes it.
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        circles: &mut Vec<String>,
    ) {
        if let Some(i) = path.iter().position(|p| p == m) {
            circles.push(format!("{} -> {m}", path[i..].join(" -> ")));
            return;
        }
        if !done.insert(m.to_owned()) {
            return;
        }
        path.push(m.to_owned());
        for u in g.get(m).into_iter().flatten() {
            visit(u, g, path, done, circles);
        }
        path.pop();
    }
    let mut circles = Vec::new();
    let mut done = BTreeSet::new();
    for m in g.keys() {
        visit(m, &g, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(circles.is_empty(), "circles:\n{}", circles.join("\n"));
}

#[test]
fn the_reader_finds_grouped_and_plain_paths_but_not_comments() {
    let src = "use crate::{a::b, c, d::{e, f}};\nlet x = crate::g::h();\n// crate::i\nuse crate::{\n    j,\n    k::l,\n};\n";
    let got: Vec<_> = references(src).into_iter().collect();
    assert_eq!(got, ["a", "c", "d", "g", "j", "k"]);
}
