//! The trained adapter as AdapterHub's folder, in memory: the files `peft train` writes (the
//! library's own builders and serializers), zipped for the download.

use anyhow::{anyhow, Context, Result};
use peft_wgpu::formats::adapterhub::{
    ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_BIN, ADAPTER_WEIGHTS_FILE, HEAD_CONFIG_FILE, HEAD_WEIGHTS_BIN,
    HEAD_WEIGHTS_FILE,
};
use peft_wgpu::formats::{torch_bin, weights, TensorMap};
use peft_wgpu::gpu::{Gpu, GpuTensor, TrackedBuffer};
use peft_wgpu::train::{AdapterTrainee, Trainee};
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

/// Each file of the adapter folder: name and bytes (`adapter_config.json`, `adapter.safetensors`,
/// `pytorch_adapter.bin`, `head_config.json`, `model_head.safetensors`, `pytorch_model_head.bin`).
pub(crate) async fn adapter_files(
    gpu: &Arc<Gpu>,
    trainee: &AdapterTrainee,
    labels: &[String],
) -> Result<Vec<(String, Vec<u8>)>> {
    // The browser cannot block: every trained tensor is read back first (awaited), and the
    // library's builder reads them from here.
    let mut values: HashMap<*const TrackedBuffer, Vec<f32>> = HashMap::new();
    let options = trainee.set.named_options();
    let tensors = trainee.params().into_iter().map(|p| p.1).chain(options.iter().map(|o| o.1));
    for t in tensors {
        values.insert(Arc::as_ptr(&t.buffer), t.to_vec_async(gpu).await?);
    }
    let read = |t: &GpuTensor| -> Result<Vec<f32>> {
        values
            .get(&Arc::as_ptr(&t.buffer))
            .cloned()
            .ok_or_else(|| anyhow!("internal: tensor {:?} was not read back", t.shape))
    };
    let a = trainee.to_adapterhub_with(&read, labels)?;
    let head = a.head.as_ref().ok_or_else(|| anyhow!("internal: the adapter has no head"))?;
    let pair = |m: &TensorMap| -> Result<(Vec<u8>, Vec<u8>)> {
        Ok((weights::serialize_tensors(m, None)?, torch_bin::serialize(m)?))
    };
    let (adapter_st, adapter_bin) = pair(&a.tensors())?;
    let (head_st, head_bin) = pair(&head.tensors())?;
    Ok(vec![
        (ADAPTER_CONFIG_FILE.into(), a.saved.to_json().into_bytes()),
        (ADAPTER_WEIGHTS_FILE.into(), adapter_st),
        (ADAPTER_WEIGHTS_BIN.into(), adapter_bin),
        (HEAD_CONFIG_FILE.into(), head.saved.to_json().into_bytes()),
        (HEAD_WEIGHTS_FILE.into(), head_st),
        (HEAD_WEIGHTS_BIN.into(), head_bin),
    ])
}

/// The files in a zip, under `folder/`.
pub(crate) fn zip(folder: &str, files: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    for (name, bytes) in files {
        z.start_file(format!("{folder}/{name}"), options).with_context(|| format!("zipping {name}"))?;
        z.write_all(bytes).with_context(|| format!("zipping {name}"))?;
    }
    Ok(z.finish().context("finishing the zip")?.into_inner())
}
