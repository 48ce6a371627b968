//! The crate's layers point one way (docs/DESIGN.md, issue 13): `reference` (the f64 specification
//! of each op, a leaf that imports nothing from the crate), `error` and `check` at the bottom,
//! then `gpu` (CUDA plumbing), `ops` (fused kernels) and `device`, then `formats`, `models`, `lora`,
//! and on top `train`, `generate`, `embed` (siblings that do not import each other). This test reads
//! every file under src/ (the CLI excepted: it is the top) and fails on a `crate::` path that reaches
//! a layer above its own, and on the training engine borrowing from the decode engine. The few
//! upward paths that remain are named in `EXCEPTIONS`, each with the reason; one that disappears
//! must leave the list too, so the list never outlives what it excuses.

mod source_support;

use source_support::source_files;

/// Each top-level module with its layer: a module may import modules of a lower layer only (and
/// itself).
const LAYERS: &[(&str, u32)] = &[
    ("reference", 0),
    ("error", 0),
    ("check", 1),
    ("gpu", 2),
    ("ops", 3),
    ("device", 3),
    ("formats", 4),
    ("models", 5),
    ("lora", 6),
    ("train", 7),
    ("generate", 7),
    ("embed", 7),
];

/// Leaf modules: their files may name no `crate::` path but their own (not even `crate::Result`),
/// so every layer can import them. `reference` is the one f64 specification per op that `ops`,
/// `gpu` and the engine checks all call.
const LEAVES: &[&str] = &["reference"];

/// The training engine (files or folders under src/): none of it may import `gpu::decode`; shared
/// engine plumbing (raw pointers, error mapping) lives in `gpu/` itself.
const TRAINING_ENGINE: &[&str] = &[
    "train/cuda_engine",
    "train/engine_layout.rs",
    "train/engine_steps.rs",
    "gpu/train",
];

/// (file under src/, imported path prefix, why it is allowed for now).
const EXCEPTIONS: &[(&str, &str, &str)] = &[
    (
        "gpu/train/reference.rs",
        "train::optimizer",
        "unit test: the kernel's AdamW reference against the trainer's AdamW",
    ),
    (
        "gpu/decode/reference.rs",
        "generate::sampler",
        "unit test: the argmax kernel's log-softmax against the sampler's",
    ),
    (
        "ops/check_suite.rs",
        "train::cuda_engine",
        "`wick bench gpu-check` drives the engine check; measurement leaves the library (issue 13)",
    ),
    (
        "ops/check_suite.rs",
        "generate::cuda_decode",
        "`wick bench gpu-check` drives the decode engine check; same move as above (issue 13)",
    ),
];

/// One `crate::` path found in a file: 1-based line and the path after `crate::`, groups expanded
/// (`crate::{ops::check, gpu::ptr}` gives `ops::check` and `gpu::ptr`).
#[derive(Debug, PartialEq)]
struct CratePath {
    line: usize,
    path: String,
}

/// Every `crate::` path of a source text, line comments stripped (doc comments name modules in prose).
fn crate_paths(text: &str) -> Vec<CratePath> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(offset) = code[from..].find("crate::") {
        let start = from + offset;
        let preceded_by_ident = start > 0 && is_ident(bytes[start - 1]);
        from = start + "crate::".len();
        if preceded_by_ident {
            continue; // `my_crate::`, not ours
        }
        let line = code[..start].matches('\n').count() + 1;
        let (paths, end) = use_tree(bytes, from);
        found.extend(paths.into_iter().map(|path| CratePath { line, path }));
        from = end.max(from);
    }
    found
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn skip_space(bytes: &[u8], mut pos: usize) -> usize {
    while pos < bytes.len() && bytes[pos].is_ascii_whitespace() {
        pos += 1;
    }
    pos
}

/// Parses a use tree at `pos` (`a::b::{c, d::e}` or `a::b`), returning the flattened paths and the
/// position after it.
fn use_tree(bytes: &[u8], pos: usize) -> (Vec<String>, usize) {
    let mut segments: Vec<String> = Vec::new();
    let mut pos = skip_space(bytes, pos);
    loop {
        if bytes.get(pos) == Some(&b'{') {
            let mut paths = Vec::new();
            pos += 1;
            loop {
                pos = skip_space(bytes, pos);
                match bytes.get(pos) {
                    None => break,
                    Some(b'}') => {
                        pos += 1;
                        break;
                    }
                    Some(b',') => pos += 1,
                    Some(_) => {
                        let (inner, end) = use_tree(bytes, pos);
                        paths.extend(inner);
                        pos = if end > pos { end } else { pos + 1 };
                    }
                }
            }
            let prefix = segments.join("::");
            let paths = paths
                .into_iter()
                .map(|p| {
                    if prefix.is_empty() {
                        p
                    } else {
                        format!("{prefix}::{p}")
                    }
                })
                .collect();
            return (paths, pos);
        }
        let start = pos;
        while pos < bytes.len() && (is_ident(bytes[pos]) || bytes[pos] == b'*') {
            pos += 1;
        }
        if pos == start {
            break;
        }
        segments.push(String::from_utf8_lossy(&bytes[start..pos]).into_owned());
        let after = skip_space(bytes, pos);
        if bytes[after..].starts_with(b"::") {
            pos = skip_space(bytes, after + 2);
        } else {
            break;
        }
    }
    let paths = if segments.is_empty() {
        Vec::new()
    } else {
        vec![segments.join("::")]
    };
    (paths, pos)
}

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// The top-level module a file belongs to: `gpu/train/check.rs` -> `gpu`, `device.rs` -> `device`.
fn module_of(file: &str) -> &str {
    let first = file.split('/').next().unwrap_or(file);
    first.strip_suffix(".rs").unwrap_or(first)
}

/// The violations of one file (path relative to src/, '/'-separated) with the exceptions applied.
fn violations(file: &str, text: &str) -> Vec<String> {
    let from = module_of(file);
    let Some(from_layer) = layer(from) else {
        return Vec::new(); // lib.rs, the CLI
    };
    let in_engine = TRAINING_ENGINE.iter().any(|e| file.starts_with(e));
    let leaf = LEAVES.contains(&from);
    let mut out = Vec::new();
    for CratePath { line, path } in crate_paths(text) {
        let to = path.split("::").next().unwrap_or("");
        if leaf && to != from {
            out.push(format!(
                "src/{file}:{line}: crate::{path}: `{from}` is a leaf and imports nothing from the crate"
            ));
            continue;
        }
        let upward = to != from && layer(to).is_some_and(|l| l >= from_layer);
        let borrows_decode = in_engine && path.starts_with("gpu::decode");
        let excused = EXCEPTIONS
            .iter()
            .any(|(f, prefix, _)| *f == file && path.starts_with(prefix));
        if (upward || borrows_decode) && !excused {
            let why = if borrows_decode {
                "the training engine imports the decode engine"
            } else {
                "reaches a sibling or a higher layer"
            };
            out.push(format!("src/{file}:{line}: crate::{path}: {why}"));
        }
    }
    out
}

#[test]
fn every_import_points_down_the_layers() {
    let files = source_files();
    assert!(
        files.len() > 50,
        "found only {} files under src/",
        files.len()
    );
    let found: Vec<String> = files
        .iter()
        .flat_map(|(file, text)| violations(file, text))
        .collect();
    assert!(found.is_empty(), "layer violations:\n{}", found.join("\n"));
}

#[test]
fn every_exception_is_still_needed() {
    let files = source_files();
    for (file, prefix, why) in EXCEPTIONS {
        let text = &files
            .iter()
            .find(|(f, _)| f == file)
            .unwrap_or_else(|| panic!("exception for missing file src/{file} ({why})"))
            .1;
        let used = crate_paths(text).iter().any(|p| p.path.starts_with(prefix));
        assert!(
            used,
            "src/{file} no longer imports crate::{prefix}: drop its exception"
        );
    }
}

#[test]
fn the_scanner_finds_grouped_and_nested_paths() {
    let text = "use crate::{ops::check, Result};\n// use crate::models::x;\nuse crate::gpu::{\n    decode::launch::device_ptr,\n    ptr,\n};\nlet y = my_crate::ops::x;\n";
    let paths: Vec<(usize, String)> = crate_paths(text)
        .into_iter()
        .map(|p| (p.line, p.path))
        .collect();
    let want = [
        (1, "ops::check"),
        (1, "Result"),
        (3, "gpu::decode::launch::device_ptr"),
        (3, "gpu::ptr"),
    ]
    .map(|(l, p)| (l, p.to_string()));
    assert_eq!(paths, want);
}

#[test]
fn the_rules_catch_what_issue_13_removed() {
    // The three imports issue 13 removed must each be reported if they come back.
    let cases = [
        ("ops/lora_linear.rs", "use crate::models::linear::Linear;"),
        (
            "gpu/train/check.rs",
            "use crate::ops::check::random_values;",
        ),
        (
            "train/cuda_engine/buffers.rs",
            "use crate::gpu::decode::launch::device_ptr;",
        ),
        (
            "gpu/train/check.rs",
            "use crate::gpu::{decode::launch::device_ptr};",
        ),
    ];
    for (file, text) in cases {
        assert_eq!(violations(file, text).len(), 1, "{file}: {text}");
    }
    // The references are a leaf: not even the error type, but their own paths pass.
    for text in ["use crate::Result;", "use crate::check::random_values;"] {
        assert_eq!(violations("reference/rope.rs", text).len(), 1, "{text}");
    }
    assert!(violations("reference/mod.rs", "use crate::reference::rope::rope;").is_empty());
    // Downward imports and a module's own paths pass.
    for (file, text) in [
        (
            "models/linear.rs",
            "use crate::ops::lora_linear::lora_linear;",
        ),
        (
            "gpu/decode/launch.rs",
            "pub use crate::gpu::ptr::device_ptr;",
        ),
        (
            "train/trainer.rs",
            "use crate::{lora::config::LoraConfig, Result};",
        ),
        (
            "ops/rms_norm.rs",
            "use crate::reference::rms_norm::rms_norm;",
        ),
        (
            "gpu/train/reference.rs",
            "use crate::reference::softmax::softmax;",
        ),
    ] {
        assert!(violations(file, text).is_empty(), "{file}: {text}");
    }
}
