//! The launch geometry of decode attention (`rope_attention` in kernels/decode_step.cu): chunk and
//! split counts, block size, scratch and shared-memory sizes, and when the capped build is taken.

use super::reference::AttentionShape;

/// Positions per chunk of `rope_attention` (ATT_CHUNK in kernels/decode_step.cu).
pub const ATTENTION_CHUNK: usize = 32;
/// Blocks per kv head of `rope_attention` (ATT_SPLITS): block y takes chunks y, y + S, ...
pub const ATTENTION_SPLITS: usize = 32;
/// Threads of one `rope_attention` block (ATT_THREADS in kernels/decode_step.cu).
const ATTENTION_THREADS: u32 = 256;
/// Most query heads per kv head (the kernel's per-head rescale array).
pub(super) const ATTENTION_MAX_GROUP: usize = 64;
/// Above this many `rope_attention` blocks an SM (kv heads x splits x sequences) the launch takes
/// the kernel capped at five blocks an SM, below it the uncapped one (faster when the blocks fit
/// four an SM). Measured (bench/results/device-s15, call 3): SmolLM2-1.7B's 1024 blocks decode a
/// 512-token context 4.7% faster capped; the 135M proxy's 96 blocks 5% faster uncapped. Between
/// the two, a grid's active blocks (its positions' chunks) mostly fit four an SM: batch 8 at the
/// 135M proxy (768 blocks) stays uncapped.
pub(super) const ATTENTION_WIDE_BLOCKS_PER_SM: usize = 6;

/// Threads of one `rope_attention` block for head dim `d`, `None` when the kernel cannot run it
/// (the key rows are read as float4, RoPE pairs dims i and i + d/2).
pub fn attention_threads(d: usize) -> Option<u32> {
    (d > 0 && d % 4 == 0).then_some(ATTENTION_THREADS)
}

/// Floats of the `rope_attention` scratch (`part`): per query head and split, `head_dim` partial
/// sums and a (max, sum) pair.
pub fn attention_scratch_floats(shape: AttentionShape) -> usize {
    shape.heads * ATTENTION_SPLITS * (shape.head_dim + 2)
}

/// Shared memory bytes of one `rope_attention` block: the group's rotated queries and running sums,
/// the new key and value, the rotation's (cos, sin) pairs, one chunk's keys and values (rows padded
/// by 4 floats), the group's scores over one chunk, running max and sum per head.
pub fn attention_shared_bytes(shape: AttentionShape) -> usize {
    let group = shape.heads / shape.kv_heads.max(1);
    let d = shape.head_dim;
    (2 * group * d + 3 * d + 2 * ATTENTION_CHUNK * (d + 4) + group * ATTENTION_CHUNK + 2 * group)
        * 4
}
