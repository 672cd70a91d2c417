//! `peft grads`: one forward + backward with the head's loss on a given batch, writing logits,
//! loss, last hidden state and the gradient of every trainable tensor under the `adapters`
//! library's names (the parity interface other tools and tests rely on).

use crate::formats::weights::{write_tensors, Tensor, TensorMap};
use crate::gpu::Gpu;
use crate::model::encoder::{Inputs, Setup};
use crate::model::load;
use anyhow::{anyhow, bail, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Arguments of `peft grads`.
#[derive(Clone, Debug, Default)]
pub struct GradsArgs {
    pub model: PathBuf,
    pub adapters: Vec<PathBuf>,
    pub fusion: Option<PathBuf>,
    pub head: Option<PathBuf>,
    pub inputs: PathBuf,
    pub out: PathBuf,
    pub resident_layers: Option<usize>,
}

pub use crate::train::data::{read_inputs_json, read_targets_json};

fn report(out: &crate::model::encoder::PassOutput) {
    eprintln!(
        "peak GPU memory {:.1} MiB, streamed {:.1} MiB of weights",
        out.peak_bytes as f64 / 1048576.0,
        out.uploaded_bytes as f64 / 1048576.0
    );
}

/// Writes logits, loss, last_hidden_state and `grad.<name>` of every trainable tensor, named as
/// the `adapters` library names it for the model's family.
fn write_outputs(
    gpu: &Arc<Gpu>,
    family: crate::model::config::Family,
    path: &Path,
    inputs: &Inputs,
    head: &crate::model::adapters::ClassificationHead,
    out: crate::model::encoder::PassOutput,
    named: Vec<(String, &crate::gpu::GpuTensor, &crate::gpu::GpuTensor)>,
) -> Result<TensorMap> {
    report(&out);
    let d = head.linears[0].w.shape[1];
    let mut map = TensorMap::new();
    let logits_shape = if head.kind().per_token() {
        vec![inputs.batch, inputs.seq, head.labels]
    } else {
        vec![inputs.batch, head.labels]
    };
    map.insert("logits".into(), Tensor::new(logits_shape, out.logits)?);
    map.insert("loss".into(), Tensor::new(vec![1], vec![out.loss.expect("labels given")])?);
    let hidden = out.last_hidden_state.expect("asked for");
    map.insert("last_hidden_state".into(), Tensor::new(vec![inputs.batch, inputs.seq, d], hidden)?);
    for (name, _, grad) in named {
        map.insert(format!("grad.{}", family.file_name(&name)), Tensor::new(grad.shape.clone(), grad.to_vec(gpu)?)?);
    }
    write_tensors(path, &map, None)?;
    Ok(map)
}

/// Runs `peft grads` and returns the tensors written.
pub fn run(gpu: &Arc<Gpu>, args: &GradsArgs) -> Result<TensorMap> {
    if args.adapters.len() > 1 && args.fusion.is_none() {
        bail!("several --adapter folders need --fusion");
    }
    let (cfg, mut enc) = load::load_encoder(gpu, &args.model, args.resident_layers)?;
    let d = cfg.hidden_size;
    if let Some(fdir) = &args.fusion {
        return run_fusion(gpu, args, fdir, &cfg, &mut enc);
    }
    let (adapter, saved_head) = match args.adapters.first() {
        Some(dir) => {
            let (a, h) = load::load_adapter(gpu, dir, &cfg)?;
            (Some(a), h)
        }
        None => (None, None),
    };
    let head = match &args.head {
        Some(dir) => load::load_head(gpu, dir, d)?,
        None => saved_head.ok_or_else(|| anyhow!("no head: pass --head DIR or an adapter saved with its head"))?,
    };
    let (inputs, targets) = read_targets_json(&args.inputs, head.kind())?;
    let setup = match &adapter {
        Some(a) => Setup::Adapter(a),
        None => Setup::None,
    };
    let out = enc.pass_targets(&setup, &head, &inputs, Some(targets.as_targets()), true, true, None)?;
    let named = adapter.iter().flat_map(|a| a.named()).chain(head.named()).collect();
    write_outputs(gpu, cfg.family(), &args.out, &inputs, &head, out, named)
}

fn run_fusion(
    gpu: &Arc<Gpu>,
    args: &GradsArgs,
    fdir: &Path,
    cfg: &crate::model::config::BertConfig,
    enc: &mut crate::model::encoder::Encoder,
) -> Result<TensorMap> {
    let d = cfg.hidden_size;
    let mut f = crate::formats::adapterhub::Fusion::load(fdir, cfg)?;
    let mut sets = vec![];
    for dir in &args.adapters {
        sets.push(load::load_adapter(gpu, dir, cfg)?.0);
    }
    // As `peft eval / predict --fusion`: fusion layers where the adapters are left out are ignored.
    crate::train::fuse::ignore_left_out_layers(&mut f, &sets, cfg.num_hidden_layers)?;
    let fusion = crate::model::fusion::FusionModel::from_fusion(gpu, &f, d)?;
    // Order the adapters as the fusion lists them.
    let mut ordered = vec![];
    for name in &fusion.adapter_names {
        let s = sets.iter().find(|s| &s.name == name).ok_or_else(|| {
            anyhow!("fusion {:?} needs adapter {name:?}: pass its folder with --adapter", fusion.name)
        })?;
        ordered.push(s);
    }
    let head = match (&args.head, &f.head) {
        (Some(dir), _) => load::load_head(gpu, dir, d)?,
        (None, Some(h)) => load::classification_head(gpu, h, d)?,
        (None, None) => bail!("no head: pass --head DIR"),
    };
    let (inputs, targets) = read_targets_json(&args.inputs, head.kind())?;
    let setup = Setup::Fusion { adapters: ordered, fusion: &fusion };
    let out = enc.pass_targets(&setup, &head, &inputs, Some(targets.as_targets()), true, true, None)?;
    let named = fusion.named().into_iter().chain(head.named()).collect();
    write_outputs(gpu, cfg.family(), &args.out, &inputs, &head, out, named)
}
