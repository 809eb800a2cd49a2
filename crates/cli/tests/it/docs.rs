//! The documentation matches the code: the crate diagram of docs/ARCHITECTURE.md lists
//! exactly the dependencies between our crates that `cargo metadata` reports.

use std::collections::BTreeSet;
use std::process::Command;

/// `from -> to` pairs of the first mermaid block of docs/ARCHITECTURE.md.
fn diagram_edges(text: &str) -> BTreeSet<(String, String)> {
    let start = text.find("```mermaid").expect("a mermaid block in docs/ARCHITECTURE.md");
    let block = &text[start + "```mermaid".len()..];
    let block = &block[..block.find("```").expect("the mermaid block ends")];
    let crate_name = |node: &str| node.trim().split('[').next().unwrap_or("").trim().to_string();
    block
        .lines()
        .filter_map(|line| line.split_once("-->"))
        .map(|(from, to)| (crate_name(from), crate_name(to)))
        .collect()
}

/// `from -> to` pairs of normal dependencies between workspace packages.
fn metadata_edges() -> BTreeSet<(String, String)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let ours: BTreeSet<&str> = packages.iter().map(|p| p["name"].as_str().unwrap()).collect();
    let mut edges = BTreeSet::new();
    for package in packages {
        for dep in package["dependencies"].as_array().unwrap() {
            let name = dep["name"].as_str().unwrap();
            if ours.contains(name) && dep["kind"].is_null() {
                edges.insert((package["name"].as_str().unwrap().to_string(), name.to_string()));
            }
        }
    }
    edges
}

#[test]
fn the_crate_diagram_matches_cargo_metadata() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/ARCHITECTURE.md");
    let documented = diagram_edges(&std::fs::read_to_string(&path).expect("read docs/ARCHITECTURE.md"));
    let actual = metadata_edges();
    let missing: Vec<_> = actual.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&actual).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/ARCHITECTURE.md's crate diagram is out of date: add {missing:?}, remove {stale:?}"
    );
}
