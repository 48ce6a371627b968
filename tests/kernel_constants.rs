//! The decode and training engines' host code sizes grids and buffers from numbers their kernels
//! fix at compile time (`#define`s in kernels/quant_matvec.cu, kernels/decode_step.cu and
//! kernels/flash_attention.cu). A host constant that drifts from its kernel's is
//! no compile error: a smaller XA_COPIES on the host than in the kernel, for one, would have the
//! batch-1 LoRA producers store past their launch's xa region. This test reads both sides.

use std::path::Path;

/// The value of `#define NAME <integer>` in a kernel source.
fn kernel_define(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("#define") && words.next() == Some(name))
            .then(|| words.next()?.parse().ok())
            .flatten()
    })
}

/// The value of `const NAME: <usize or u32> = <integer>;` (any visibility) in a Rust source.
fn rust_const(text: &str, name: &str) -> Option<u64> {
    ["usize", "u32"]
        .iter()
        .find_map(|ty| rust_const_of(text, name, ty))
}

fn rust_const_of(text: &str, name: &str, ty: &str) -> Option<u64> {
    let key = format!("const {name}: {ty} = ");
    text.lines().find_map(|line| {
        let rest = &line[line.find(&key)? + key.len()..];
        rest.trim_end().strip_suffix(';')?.parse().ok()
    })
}

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

/// Asserts each (kernel #define, host constant) pair of `kernel` and the Rust file `host` agree.
fn assert_same(kernel: &str, host: &str, pairs: &[(&str, &str)]) {
    let (kernel_text, host_text) = (read(kernel), read(host));
    for &(define, host_name) in pairs {
        let device = kernel_define(&kernel_text, define)
            .unwrap_or_else(|| panic!("no `#define {define} <integer>` in {kernel}"));
        let value = rust_const(&host_text, host_name)
            .unwrap_or_else(|| panic!("no `const {host_name}` in {host}"));
        assert_eq!(
            value, device,
            "{host_name} = {value} in {host}, but {define} = {device} in {kernel}"
        );
    }
}

#[test]
fn host_constants_match_the_mat_vec_kernels() {
    // (constant, the Rust file that holds the host's copy)
    let pairs = [
        ("XA_COPIES", "src/gpu/decode/lora_epilogue.rs"),
        ("SHRINK_ROUND", "src/gpu/decode/matvec_grid.rs"),
        ("MV_WARPS", "src/gpu/decode/launch.rs"),
        ("MV1_MAX_WARPS", "src/gpu/decode/launch.rs"),
        ("QMVB_SPLIT", "src/gpu/decode/launch.rs"),
        ("QMVB_WIDE_SPLIT", "src/gpu/decode/launch.rs"),
    ];
    for (name, file) in pairs {
        assert_same("kernels/quant_matvec.cu", file, &[(name, name)]);
    }
}

#[test]
fn host_constants_match_the_decode_attention_kernel() {
    assert_same(
        "kernels/decode_step.cu",
        "src/gpu/decode/attention_layout.rs",
        &[
            ("ATT_CHUNK", "ATTENTION_CHUNK"),
            ("ATT_SPLITS", "ATTENTION_SPLITS"),
            ("ATT_THREADS", "ATTENTION_THREADS"),
        ],
    );
}

#[test]
fn host_constants_match_the_flash_attention_kernels() {
    // The forward's grid and every kernel's dynamic shared memory (a host size below the
    // kernel's would let a block write past its shared memory).
    assert_same(
        "kernels/flash_attention.cu",
        "src/gpu/train/flash_attention.rs",
        &[
            ("FA_FWD_ROWS", "FWD_ROWS"),
            ("FA_FORWARD_TILES", "FORWARD_TILES"),
            ("FA_DKDV_TILES", "DKDV_TILES"),
            ("FA_DQ_TILES", "DQ_TILES"),
        ],
    );
}

#[test]
fn the_readers_find_what_they_are_asked_for() {
    let c = "#define A 8\n#define AB 3\n// #define C 1\n#define D x\n";
    assert_eq!(kernel_define(c, "A"), Some(8));
    assert_eq!(kernel_define(c, "AB"), Some(3));
    assert_eq!(kernel_define(c, "C"), None);
    assert_eq!(kernel_define(c, "D"), None);
    let r = "pub const A: usize = 8;\nconst AB: usize = 3;\nconst B: u32 = 1;\nconst E: i32 = 2;\n";
    assert_eq!(rust_const(r, "A"), Some(8));
    assert_eq!(rust_const(r, "AB"), Some(3));
    assert_eq!(rust_const(r, "B"), Some(1));
    assert_eq!(rust_const(r, "E"), None);
    assert_eq!(rust_const(r, "F"), None);
}
