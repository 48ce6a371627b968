//! Checking a weight source against the tensors a config implies, before any weight is loaded.

use std::collections::HashMap;

use crate::formats::weights::WeightSource;
use crate::{Error, Result};

/// Tensors some files carry that no model reads: precomputed RoPE tables (HF `rotary_emb.inv_freq`,
/// GGUF `rope_freqs.weight`, which the config already reflects).
fn is_ignorable(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq") || name == "rope_freqs.weight"
}

/// Checks that `source` holds exactly the `expected` tensors (HF names) with the expected shapes.
/// Every problem is listed at once in [`Error::TensorMismatch`]: missing tensors, unexpected ones,
/// and (name, expected shape, found shape) for mismatches.
pub fn check_tensors(source: &dyn WeightSource, expected: &[(String, Vec<usize>)]) -> Result<()> {
    let wanted: HashMap<&str, &[usize]> = expected
        .iter()
        .map(|(name, shape)| (name.as_str(), shape.as_slice()))
        .collect();
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    for (name, shape) in expected {
        match source.shape(name) {
            None => missing.push(name.clone()),
            Some(found) if found != *shape => {
                mismatched.push((name.clone(), shape.clone(), found));
            }
            Some(_) => {}
        }
    }
    let mut unexpected: Vec<String> = source
        .names()
        .into_iter()
        .filter(|name| !wanted.contains_key(name.as_str()) && !is_ignorable(name))
        .collect();
    unexpected.sort();
    if missing.is_empty() && unexpected.is_empty() && mismatched.is_empty() {
        return Ok(());
    }
    Err(Error::TensorMismatch {
        path: source.path().to_path_buf(),
        missing,
        unexpected,
        mismatched,
    })
}
