//! [`GgufSource`]: the tensors of a GGUF file as a [`WeightSource`] keyed by Hugging Face names, with
//! llama.cpp's per-head Q/K row permutation undone for LLaMA-architecture files.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::DType;

use super::file::{qtensor_from_bytes, AlignedBytes, GgufFile};
use super::header::value_as_u64;
use crate::formats::weights::{LoadOptions, Weight, WeightSource};
use crate::{Context, Error, Result};

/// Maps a llama.cpp tensor name to its Hugging Face name (`None` for names with no HF twin).
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    let (base, suffix) = name.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let top = match base {
        "token_embd" => Some("model.embed_tokens".to_string()),
        "output_norm" => Some("model.norm".to_string()),
        "output" => Some("lm_head".to_string()),
        _ => None,
    };
    if let Some(top) = top {
        return Some(format!("{top}.{suffix}"));
    }
    let rest = base.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let module = match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{module}.{suffix}"))
}

/// Undoes llama.cpp's per-head Q/K row permutation on a tensor of `rows` rows of `row_bytes` bytes each.
/// GGUF row `h*d + 2i + j` holds HF row `h*d + j*d/2 + i` (d = head_dim, i < d/2, j in {0, 1}).
pub fn unpermute_rows(
    bytes: &[u8],
    rows: usize,
    n_head: usize,
) -> std::result::Result<Vec<u8>, String> {
    let mut out = vec![0u8; bytes.len()];
    unpermute_rows_into(bytes, &mut out, rows, n_head)?;
    Ok(out)
}

fn unpermute_rows_into(
    bytes: &[u8],
    out: &mut [u8],
    rows: usize,
    n_head: usize,
) -> std::result::Result<(), String> {
    check_head_rows(bytes, rows, n_head)?;
    let row_bytes = bytes.len() / rows;
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let src = h * head_dim + 2 * i + j;
                let dst = h * head_dim + j * half + i;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&bytes[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    Ok(())
}

/// llama.cpp's per-head Q/K row permutation (convert_hf_to_gguf.py's `LlamaModel.permute`), the inverse
/// of [`unpermute_rows`]: GGUF row `h*d + 2i + j` gets HF row `h*d + j*d/2 + i`.
pub fn permute_rows(
    bytes: &[u8],
    rows: usize,
    n_head: usize,
) -> std::result::Result<Vec<u8>, String> {
    check_head_rows(bytes, rows, n_head)?;
    let row_bytes = bytes.len() / rows;
    let (head_dim, mut out) = (rows / n_head, vec![0u8; bytes.len()]);
    for h in 0..n_head {
        for i in 0..head_dim / 2 {
            for j in 0..2 {
                let dst = h * head_dim + 2 * i + j;
                let src = h * head_dim + j * head_dim / 2 + i;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&bytes[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    Ok(out)
}

/// Rows must split into `n_head` heads of an even number of whole rows.
fn check_head_rows(bytes: &[u8], rows: usize, n_head: usize) -> std::result::Result<(), String> {
    if n_head == 0
        || rows == 0
        || rows % n_head != 0
        || (rows / n_head) % 2 != 0
        || bytes.len() % rows.max(1) != 0
    {
        return Err(format!(
            "cannot split {rows} rows into {n_head} heads of an even number of rows"
        ));
    }
    Ok(())
}

/// The weights of a GGUF file, by HF name, with LLaMA Q/K rows un-permuted.
pub struct GgufSource {
    file: Arc<GgufFile>,
    /// HF name -> llama.cpp name.
    names: HashMap<String, String>,
    /// (q heads, kv heads) when the rows of attn_q / attn_k must be un-permuted (llama architecture).
    unpermute_heads: Option<(usize, usize)>,
    options: LoadOptions,
}

impl GgufSource {
    /// Wraps an open GGUF file. `unpermute_heads` is `Some((n_head, n_head_kv))` for llama-architecture
    /// files (see [`GgufSource::from_file`]).
    pub fn new(
        file: Arc<GgufFile>,
        unpermute_heads: Option<(usize, usize)>,
        options: LoadOptions,
    ) -> Self {
        let names = file
            .header()
            .tensors
            .iter()
            .map(|t| {
                // Names without an HF twin (rope_freqs.weight, ...) keep their llama.cpp name.
                let hf = gguf_to_hf_name(&t.name).unwrap_or_else(|| t.name.clone());
                (hf, t.name.clone())
            })
            .collect();
        Self {
            file,
            names,
            unpermute_heads,
            options,
        }
    }

    /// A source over `file` that un-permutes Q/K when the file's architecture is `llama`, reading the
    /// head counts from `{arch}.attention.head_count[_kv]`.
    pub fn from_file(file: Arc<GgufFile>, options: LoadOptions) -> Result<Self> {
        let arch = file.meta_str("general.architecture").unwrap_or("");
        let unpermute = if arch == "llama" {
            let heads = file
                .meta("llama.attention.head_count")
                .and_then(value_as_u64)
                .ok_or_else(|| Error::Format {
                    path: file.path().to_path_buf(),
                    reason: "missing metadata `llama.attention.head_count`".into(),
                })? as usize;
            let kv = file
                .meta("llama.attention.head_count_kv")
                .and_then(value_as_u64)
                .map(|v| v as usize)
                .unwrap_or(heads);
            Some((heads, kv))
        } else {
            None
        };
        Ok(Self::new(file, unpermute, options))
    }

    /// The underlying file.
    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }

    /// How many heads a tensor's rows are permuted over (`None`: not permuted).
    fn permuted_heads(&self, gguf_name: &str) -> Option<usize> {
        let (q, kv) = self.unpermute_heads?;
        let part = gguf_name.strip_prefix("blk.")?.split_once('.')?.1;
        match part {
            "attn_q.weight" | "attn_q.bias" => Some(q),
            "attn_k.weight" | "attn_k.bias" => Some(kv),
            _ => None,
        }
    }

    /// The tensor by llama.cpp name as HF lays it out (rows un-permuted), on the source's device.
    fn load_qtensor(&self, gguf_name: &str) -> Result<QTensor> {
        let path = self.file.path();
        let info = self
            .file
            .tensor_info(gguf_name)
            .ok_or_else(|| Error::Format {
                path: path.to_path_buf(),
                reason: format!("no tensor `{gguf_name}`"),
            })?;
        let bytes = self.file.tensor_bytes(info);
        let device = &self.options.device;
        let what = || format!("{}: loading tensor `{gguf_name}`", path.display());
        match self.permuted_heads(gguf_name) {
            None => qtensor_from_bytes(info, bytes, device).context(what()),
            Some(n_head) => {
                let rows = info.dims[0];
                let mut out = AlignedBytes::zeroed(bytes.len());
                unpermute_rows_into(bytes, out.as_mut_slice(), rows, n_head).map_err(|reason| {
                    Error::Format {
                        path: path.to_path_buf(),
                        reason: format!("tensor `{gguf_name}`: {reason}"),
                    }
                })?;
                qtensor_from_bytes(info, out.as_slice(), device).context(what())
            }
        }
    }
}

impl WeightSource for GgufSource {
    fn path(&self) -> &Path {
        self.file.path()
    }

    fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// Matrices stay quantized when `options.dtype` is `None` (vectors such as norms and biases are
    /// always returned dense in f32); with `Some(dtype)` every tensor is dequantized to that dtype.
    fn get(&self, name: &str) -> Result<Weight> {
        let gguf_name = self.names.get(name).ok_or_else(|| Error::Format {
            path: self.file.path().to_path_buf(),
            reason: format!("no tensor `{name}` (HF name) in the file"),
        })?;
        let q = self.load_qtensor(gguf_name)?;
        let what = || format!("{}: dequantizing `{gguf_name}`", self.file.path().display());
        match self.options.dtype {
            None if q.rank() >= 2 => Ok(Weight::Quantized(Arc::new(q))),
            None => Ok(Weight::Dense(
                q.dequantize(&self.options.device).context(what())?,
            )),
            Some(dtype) => {
                let t = q.dequantize(&self.options.device).context(what())?;
                let t = if dtype == DType::F32 {
                    t
                } else {
                    t.to_dtype(dtype).context(what())?
                };
                Ok(Weight::Dense(t))
            }
        }
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.names.keys().cloned().collect();
        names.sort();
        names
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let gguf_name = self.names.get(name)?;
        self.file.tensor_info(gguf_name).map(|t| t.dims.clone())
    }

    fn stored_type(&self, name: &str) -> Option<String> {
        let gguf_name = self.names.get(name)?;
        self.file
            .tensor_info(gguf_name)
            .map(|t| format!("{:?}", t.dtype))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        assert_eq!(
            gguf_to_hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(
            gguf_to_hf_name("blk.11.attn_output.weight").as_deref(),
            Some("model.layers.11.self_attn.o_proj.weight")
        );
        assert_eq!(
            gguf_to_hf_name("blk.0.attn_q.bias").as_deref(),
            Some("model.layers.0.self_attn.q_proj.bias")
        );
        assert_eq!(
            gguf_to_hf_name("blk.3.ffn_norm.weight").as_deref(),
            Some("model.layers.3.post_attention_layernorm.weight")
        );
        assert_eq!(gguf_to_hf_name("rope_freqs.weight"), None);
    }

    /// Permuting rows the way convert_hf_to_gguf does, then un-permuting, gives the rows back.
    #[test]
    fn unpermute_inverts_llamacpp_permute() {
        let (n_head, head_dim, row_bytes) = (3usize, 8usize, 5usize);
        let rows = n_head * head_dim;
        let hf: Vec<u8> = (0..rows * row_bytes).map(|i| (i * 7 % 251) as u8).collect();
        // llama.cpp: w.reshape(n_head, 2, d/2, in).swapaxes(1, 2): gguf[h, i, j] = hf[h, j, i].
        let mut gguf = vec![0u8; hf.len()];
        for h in 0..n_head {
            for j in 0..2 {
                for i in 0..head_dim / 2 {
                    let src = h * head_dim + j * head_dim / 2 + i;
                    let dst = h * head_dim + i * 2 + j;
                    gguf[dst * row_bytes..(dst + 1) * row_bytes]
                        .copy_from_slice(&hf[src * row_bytes..(src + 1) * row_bytes]);
                }
            }
        }
        assert_ne!(gguf, hf);
        assert_eq!(unpermute_rows(&gguf, rows, n_head).unwrap(), hf);
        assert_eq!(permute_rows(&hf, rows, n_head).unwrap(), gguf);
    }
}
