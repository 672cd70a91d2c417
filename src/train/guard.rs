//! Checks made before any work is sent to the GPU: does the largest batch fit the GPU's buffer
//! limits?

use crate::gpu::Gpu;
use crate::model::encoder::Dims;
use anyhow::{bail, Result};

/// The largest single buffers one training pass of `batch × seq` tokens allocates, with their
/// names: attention probabilities `[batch, heads, seq, seq]`, the FFN's intermediate activations
/// `[batch·seq, ffn]`, hidden states `[batch·seq, hidden]`.
pub fn largest_buffers(dims: &Dims, batch: usize, seq: usize) -> [(&'static str, u64); 3] {
    let (b, s) = (batch as u64, seq as u64);
    [
        ("attention probabilities [batch, heads, seq, seq]", b * dims.heads as u64 * s * s * 4),
        ("FFN activations [batch·seq, intermediate]", b * s * crate::model::store::ffn_row_stride(dims.ffn) as u64 * 4),
        ("hidden states [batch·seq, hidden]", b * s * dims.hidden as u64 * 4),
    ]
}

/// The largest batch size whose buffers fit, for `seq` tokens per example.
pub fn max_batch(gpu: &Gpu, dims: &Dims, seq: usize) -> usize {
    let limit = gpu.max_binding_bytes().min(gpu.limits.max_buffer_size);
    let per_example = largest_buffers(dims, 1, seq).iter().map(|x| x.1).max().unwrap_or(1).max(1);
    (limit / per_example) as usize
}

/// Fails, before anything runs, when a batch of `batch` examples of up to `seq` tokens needs a
/// buffer larger than this GPU allows (its largest storage binding or buffer), suggesting a batch
/// size that fits.
pub fn check_batch_fits(gpu: &Gpu, dims: &Dims, batch: usize, seq: usize) -> Result<()> {
    let binding = gpu.max_binding_bytes();
    let buffer = gpu.limits.max_buffer_size;
    let limit = binding.min(buffer);
    let (what, bytes) = largest_buffers(dims, batch, seq).into_iter().max_by_key(|x| x.1).expect("three buffers");
    if bytes > limit {
        let fits = max_batch(gpu, dims, seq);
        if fits == 0 {
            bail!(
                "one example of {seq} tokens already needs a {} MiB buffer ({what}), more than this GPU allows \
                 ({} MiB): use a smaller --max-length",
                (bytes / batch.max(1) as u64).div_ceil(1 << 20),
                limit >> 20
            );
        }
        bail!(
            "a batch of {batch} examples × {seq} tokens needs a {} MiB buffer ({what}), more than this GPU allows \
             ({} MiB per storage binding, {} MiB per buffer): use --batch-size {} or less (or a smaller --max-length); \
             if the GPU then runs out of memory, keep fewer layers on it with --resident-layers",
            bytes.div_ceil(1 << 20),
            binding >> 20,
            buffer >> 20,
            fits.max(1)
        );
    }
    Ok(())
}
