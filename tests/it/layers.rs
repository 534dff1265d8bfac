//! The layers point one way: a module of either crate (`crates/swav-formats/src`, `src`) may
//! use modules of lower layers and never one of a higher or the same layer (the few pairs that
//! form one layer together are named). A new module must be given its layer here.
//!
//! tensor → checkpoint → layout → selection → model / data → collective + dist → train / eval;
//! convert and fetch use the layers and are used by none; commands (what the Burn binaries
//! run) sits on top of everything. Utilities (latin1, atomic, digest,
//! report, cli, yaml) use nothing above them. The crate boundary adds the rest: the
//! formats crate cannot name Burn or this crate's modules at all.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each top-level module and its layer (lower numbers are lower layers).
const LAYERS: &[(&str, u32)] = &[
    ("latin1", 0),
    ("atomic", 0),
    ("digest", 0),
    ("report", 0),
    ("cli", 1),
    ("yaml", 0),
    ("tensor", 1),
    ("checkpoint", 2),
    ("layout", 3),
    ("selection", 4),
    ("backend", 5),
    ("plot", 5),
    ("model", 6),
    ("data", 6),
    ("collective", 7),
    ("dist", 7),
    ("train", 8),
    ("eval", 8),
    ("convert", 9),
    ("fetch", 9),
    ("commands", 10),
];

/// Modules of one layer that use each other (the collective engine and the process session).
const SAME_LAYER: &[(&str, &str)] = &[("collective", "dist"), ("dist", "collective")];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// The top-level module a source file belongs to (`src/train/state.rs` → `train`); `None`
/// for the crate roots.
fn module_of(root: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(root).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (name != "lib").then(|| name.to_string())
}

/// The top-level modules a source text names through `crate::` (or `swav_formats::`, which
/// the root crate re-exports as its own): `crate::a::b`, `crate::{a, b::{c, d}}` over any
/// number of lines. Comments are left out, and macros such as `crate::with_backend!`.
fn uses(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for prefix in ["crate::", "swav_formats::"] {
        let mut rest = code.as_str();
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().next_back();
            let after = &rest[i + prefix.len()..];
            rest = after;
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(group) = after.strip_prefix('{') {
                // The top-level items of a (nested, multi-line) group.
                let mut depth = 0;
                let mut item_start = true;
                for (k, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => item_start = true,
                        c if item_start && !c.is_whitespace() => {
                            item_start = false;
                            let name = ident(&group[k..]);
                            if !name.is_empty() && name != "self" {
                                out.insert(name);
                            }
                        }
                        _ => {}
                    }
                }
            } else {
                let name = ident(after);
                let is_macro = after[name.len()..].starts_with('!');
                if !name.is_empty() && !is_macro {
                    out.insert(name);
                }
            }
        }
    }
    out
}

/// Every `use` that breaks the layering, as `file: a -> b (why)`.
fn violations(files: &[(PathBuf, String, String)]) -> Vec<String> {
    let mut bad = Vec::new();
    for (file, module, text) in files {
        let Some(from) = layer(module) else {
            bad.push(format!(
                "{}: module `{module}` has no layer",
                file.display()
            ));
            continue;
        };
        for used in uses(text) {
            if &used == module {
                continue;
            }
            let Some(to) = layer(&used) else {
                bad.push(format!(
                    "{}: uses `crate::{used}`, which has no layer",
                    file.display()
                ));
                continue;
            };
            let paired = SAME_LAYER.contains(&(module.as_str(), used.as_str()));
            if to > from || (to == from && !paired) {
                bad.push(format!(
                    "{}: {module} (layer {from}) uses {used} (layer {to})",
                    file.display()
                ));
            }
        }
    }
    bad
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn crate_files(root: &Path) -> Vec<(PathBuf, String, String)> {
    let mut paths = Vec::new();
    sources(root, &mut paths);
    paths
        .into_iter()
        .filter_map(|p| {
            let module = module_of(root, &p)?;
            let text = std::fs::read_to_string(&p).unwrap();
            Some((p, module, text))
        })
        .collect()
}

#[test]
fn lower_layers_never_use_higher_ones() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let formats = crate_files(&repo.join("crates/swav-formats/src"));
    let swav = crate_files(&repo.join("src"));
    assert!(
        formats.len() >= 20,
        "{} files in swav-formats",
        formats.len()
    );
    assert!(swav.len() >= 40, "{} files in swav", swav.len());
    let mut bad = violations(&formats);
    bad.extend(violations(&swav));
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
}

#[test]
fn the_check_sees_a_higher_import_and_an_unplaced_module() {
    let file = |m: &str, text: &str| (PathBuf::from(format!("{m}.rs")), m.to_string(), text.into());
    let files = [
        file(
            "checkpoint",
            "use crate::tensor::Tensor;\n// crate::train in a comment\n",
        ),
        file("model", "use crate::{layout::Layout, train::state};\n"),
        file("tensor", "fn f() { crate::convert::convert(); }\n"),
        file("eval", "use crate::train::config;\n"),
        file("backend", "crate::with_backend!(x);\n"),
        file("newthing", ""),
        file(
            "layout",
            "use crate::{\n    tensor::{DType,\n        Tensor},\n    selection::select,\n};\n",
        ),
        file(
            "data",
            "use swav_formats::{checkpoint::{self, Checkpoint}, convert::convert};\n",
        ),
    ];
    let bad = violations(&files);
    assert_eq!(bad.len(), 6, "{bad:#?}");
    assert!(bad[0].contains("model (layer 6) uses train"));
    assert!(bad[1].contains("tensor (layer 1) uses convert"));
    assert!(bad[2].contains("eval (layer 8) uses train"));
    assert!(bad[3].contains("`newthing` has no layer"));
    assert!(bad[4].contains("layout (layer 3) uses selection"));
    assert!(bad[5].contains("data (layer 6) uses convert"));
}

#[test]
fn the_formats_crate_has_no_burn_dependency() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crates/swav-formats/Cargo.toml");
    let text = std::fs::read_to_string(manifest).unwrap();
    let deps: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .filter(|l| l.starts_with("burn") || l.starts_with("swav-rs") || l.contains("cubecl"))
        .collect();
    assert!(text.contains("[dependencies]"));
    assert!(deps.is_empty(), "swav-formats depends on {deps:?}");
}
