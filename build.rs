//! Under feature `cuda`: compiles kernels/*.cu with nvcc into fatbins (sm_XX machine code plus
//! compute_XX PTX for newer GPUs) that src/gpu/kernels.rs embeds, so the driver does not JIT-compile
//! wick's kernels on first use. Without `cuda` it does nothing and needs no nvcc.
//!
//! nvcc is `$CUDA_HOME/bin/nvcc` when that exists, else `nvcc` on PATH (scripts/cuda-build.sh sets
//! both); the architecture is `CUDA_COMPUTE_CAP` (default 90, the H100).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = std::env::var_os("CUDA_HOME")
        .map(|home| PathBuf::from(home).join("bin").join("nvcc"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let cap = cap.trim().replace('.', "");
    let mut sources: Vec<PathBuf> = std::fs::read_dir("kernels")
        .expect("kernels/ directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    for src in sources {
        println!("cargo:rerun-if-changed={}", src.display());
        let stem = src
            .file_stem()
            .expect("file name")
            .to_string_lossy()
            .to_string();
        let out = out_dir.join(format!("{stem}.fatbin"));
        let status = Command::new(&nvcc)
            .args(["-O3", "-fatbin", "-std=c++17"])
            .arg(format!(
                "-gencode=arch=compute_{cap},code=[sm_{cap},compute_{cap}]"
            ))
            .arg("-Ikernels")
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("running {} for {}: {e}", nvcc.display(), src.display()));
        if !status.success() {
            panic!("nvcc failed on {} ({status})", src.display());
        }
    }
}
