//! One specification per op (issue 13): the f64 maths of RMSNorm, SwiGLU, softmax, RoPE and
//! cross-entropy (forward and backward) is written once, in src/reference/, and every check calls
//! it; the engines' CPU references (`gpu::train::reference`, `gpu::decode::*reference`) keep only
//! their layout glue. This test fails when a second copy appears in the forms the old ones took:
//! a function named after an op's reference, a function named after an op in an engine's reference
//! file, or the f64 maths' fingerprints (the f64 sigmoid, the f64 row max of a softmax) in library
//! code outside src/reference/ (unit tests may check against hand-written maths).

mod source_support;

use source_support::{code_only, functions, source_files};

/// The ops whose f64 specification lives in src/reference/.
const OPS: &[&str] = &["rms_norm", "swiglu", "softmax", "rope", "cross_entropy"];

/// Names an engine's CPU reference must not define: the ops, their backwards and the helpers the
/// old copies used; glue is named after the kernel it specifies (`prefill_rms_rows`, `causal_softmax`).
const OP_NAMES: &[&str] = &[
    "rms_norm",
    "rms_norm_backward",
    "swiglu",
    "swiglu_backward",
    "softmax",
    "softmax_backward",
    "rope",
    "rotate",
    "cross_entropy",
    "sigmoid",
    "silu",
    "label_count",
];

/// Text that only f64 reference maths writes: the f64 sigmoid and the f64 row max of a softmax.
const FINGERPRINTS: &[&str] = &["(1.0 + (-", ".fold(f64::NEG_INFINITY"];

fn is_engine_reference(file: &str) -> bool {
    file.starts_with("gpu/") && (file.ends_with("/reference.rs") || file.ends_with("_reference.rs"))
}

/// The library part of a file: the code before its unit tests, comments and strings blanked.
fn library_code(text: &str) -> String {
    let code = String::from_utf8(code_only(text)).expect("blanking keeps UTF-8 boundaries");
    match code.find("#[cfg(test)]\nmod tests") {
        Some(at) => code[..at].to_string(),
        None => code,
    }
}

/// Every second copy of an op's reference in (file under src/, text), as messages.
fn second_copies(file: &str, text: &str) -> Vec<String> {
    if file.starts_with("reference/") {
        return Vec::new();
    }
    let mut found = Vec::new();
    for f in functions(text) {
        let named_reference =
            f.name.contains("reference") && OPS.iter().any(|op| f.name.contains(op));
        let op_in_engine_reference = is_engine_reference(file) && OP_NAMES.contains(&&*f.name);
        if named_reference || op_in_engine_reference {
            found.push(format!(
                "src/{file}:{}: fn {}: an op's f64 maths belongs in src/reference/",
                f.line, f.name
            ));
        }
    }
    let code = library_code(text);
    for print in FINGERPRINTS {
        if let Some(at) = code.find(print) {
            let line = code[..at].matches('\n').count() + 1;
            found.push(format!(
                "src/{file}:{line}: `{print}`: f64 op maths outside src/reference/ (call it instead)"
            ));
        }
    }
    found
}

#[test]
fn each_op_has_one_f64_reference() {
    let files = source_files();
    for op in OPS {
        assert!(
            files
                .iter()
                .any(|(f, _)| *f == format!("reference/{op}.rs")),
            "src/reference/{op}.rs is missing"
        );
    }
    let found: Vec<String> = files
        .iter()
        .flat_map(|(file, text)| second_copies(file, text))
        .collect();
    assert!(found.is_empty(), "second references:\n{}", found.join("\n"));
}

#[test]
fn the_old_copies_would_be_caught() {
    let cases = [
        (
            "ops/rms_norm.rs",
            "pub fn rms_norm_reference(x: &[f64]) -> Vec<f64> { x.to_vec() }",
        ),
        (
            "gpu/train/reference.rs",
            "pub fn swiglu(g: &[f64]) -> Vec<f64> { g.to_vec() }",
        ),
        (
            "gpu/decode/reference.rs",
            "fn rotate(x: &[f64]) -> f64 { x[0] }",
        ),
        (
            "gpu/decode/lora_reference.rs",
            "fn f(g: f64, u: f64) -> f64 { g / (1.0 + (-g).exp()) * u }",
        ),
        (
            "ops/decode_attention.rs",
            "fn f(s: &[f64]) -> f64 { s.iter().cloned().fold(f64::NEG_INFINITY, f64::max) }",
        ),
    ];
    for (file, text) in cases {
        assert_eq!(second_copies(file, text).len(), 1, "{file}: {text}");
    }
    // Glue named after its kernel, the op itself in ops/, tests and src/reference/ pass.
    for (file, text) in [
        (
            "gpu/decode/reference.rs",
            "pub fn prefill_rms_rows(x: &[f32]) -> Vec<f64> { vec![] }",
        ),
        ("ops/swiglu.rs", "pub fn swiglu(g: &Tensor) -> Tensor { g }"),
        (
            "gpu/decode/reference.rs",
            "#[cfg(test)]\nmod tests {\n fn t() { let s = 1.0 / (1.0 + (-2f64).exp()); }\n}",
        ),
        (
            "reference/swiglu.rs",
            "pub fn swiglu(g: f64) -> f64 { g / (1.0 + (-g).exp()) }",
        ),
    ] {
        assert!(second_copies(file, text).is_empty(), "{file}: {text}");
    }
}
