//! Saving and loading the state file: tensors as safetensors, the rest as JSON in its header's
//! metadata (written and read by serde).

use super::{Progress, FORMAT, STATE_FILE, STATE_KEY};
use crate::formats::weights::{write_tensors, Tensor, TensorMap, WeightFile};
use crate::gpu::{Gpu, GpuTensor};
use crate::train::data::Tokenized;
use crate::train::optimizer::Optimizer;
use anyhow::{bail, Context, Result};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The settings of a resumable run (`TrainArgs`, `FuseArgs`): what `--resume` restores.
pub trait RunSettings: Serialize + DeserializeOwned {
    /// The output folder is not saved: it is where the state was read from.
    fn set_out(&mut self, out: &Path);
}

/// The JSON in the state file's metadata.
#[derive(Serialize, Deserialize)]
struct State {
    format: String,
    args: Value,
    progress: Progress,
    data: String,
    params: Vec<String>,
}

/// `p` made absolute when it exists (so `--resume` works from any folder).
pub fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// FNV-1a over the tokenized train and dev sets, their label ids and the label names: a resumed
/// run must see exactly the data the stopped one saw.
pub fn fingerprint(parts: &[(&[Tokenized], &[u32])], labels: &[String]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (tokens, ids) in parts {
        eat(&(tokens.len() as u64).to_le_bytes());
        for t in *tokens {
            eat(&(t.ids.len() as u64).to_le_bytes());
            for (&i, &ty) in t.ids.iter().zip(&t.types) {
                eat(&i.to_le_bytes());
                eat(&ty.to_le_bytes());
            }
        }
        for &l in *ids {
            eat(&l.to_le_bytes());
        }
    }
    for l in labels {
        eat(&(l.len() as u64).to_le_bytes());
        eat(l.as_bytes());
    }
    format!("{h:016x}")
}

fn host(gpu: &Gpu, t: &GpuTensor) -> Result<Tensor> {
    Tensor::new(t.shape.clone(), t.to_vec(gpu)?)
}

/// Writes the state file into `out` atomically: `param.<name>`, `exp_avg.<name>`,
/// `exp_avg_sq.<name>` for every trainable tensor, and the JSON (the run's `settings` as
/// [`crate::train::TrainArgs::settings`] writes them, the progress, the data fingerprint) in the metadata.
pub fn save(
    gpu: &Gpu,
    out: &Path,
    settings: &Value,
    progress: &Progress,
    data_fingerprint: &str,
    params: &[(String, &GpuTensor, &GpuTensor)],
    opt: &Optimizer,
) -> Result<()> {
    if opt.step as usize != progress.step {
        bail!("internal: optimizer at step {}, loop at step {}", opt.step, progress.step);
    }
    let mut tensors = TensorMap::new();
    for ((name, w, _), (m, v)) in params.iter().zip(&opt.moments) {
        tensors.insert(format!("param.{name}"), host(gpu, w)?);
        tensors.insert(format!("exp_avg.{name}"), host(gpu, m)?);
        tensors.insert(format!("exp_avg_sq.{name}"), host(gpu, v)?);
    }
    let state = State {
        format: FORMAT.into(),
        args: settings.clone(),
        progress: progress.clone(),
        data: data_fingerprint.into(),
        params: params.iter().map(|p| p.0.clone()).collect(),
    };
    let meta = HashMap::from([(STATE_KEY.to_string(), serde_json::to_string(&state)?)]);
    let path = out.join(STATE_FILE);
    write_tensors(&path, &tensors, Some(meta)).with_context(|| format!("saving the training state {}", path.display()))
}

/// A state file, read back.
pub struct Saved {
    pub path: PathBuf,
    /// The run's settings (a [`crate::train::TrainArgs`] or [`crate::train::fuse::FuseArgs`]);
    /// see [`Saved::settings`].
    pub args: Value,
    pub progress: Progress,
    pub data_fingerprint: String,
    pub params: Vec<String>,
    pub tensors: WeightFile,
}

/// Reads `<dir>/trainer_state.safetensors`.
pub fn load(dir: &Path) -> Result<Saved> {
    let path = dir.join(STATE_FILE);
    if !path.exists() {
        bail!(
            "{}: no {STATE_FILE}: not the output folder of a `peft train` or `peft fuse` run (or one from before resumable runs)",
            dir.display()
        );
    }
    let tensors = WeightFile::open(&path)?;
    let text = tensors
        .metadata()
        .and_then(|m| m.get(STATE_KEY))
        .with_context(|| format!("{}: no {STATE_KEY:?} in the header's metadata", path.display()))?;
    let parse = || -> Result<Saved> {
        let v: Value = serde_json::from_str(text).context("invalid JSON")?;
        let format = v.get("format").and_then(Value::as_str).unwrap_or("");
        if format != FORMAT {
            bail!("format {format:?}, this build reads {FORMAT:?}");
        }
        let s: State = serde_json::from_value(v)?;
        Ok(Saved {
            path: path.clone(),
            args: s.args,
            progress: s.progress,
            data_fingerprint: s.data,
            params: s.params,
            tensors: WeightFile::open(&path)?,
        })
    };
    parse().with_context(|| format!("{}: invalid training state", path.display()))
}

impl Saved {
    /// The run's settings as `A`, with `out` the folder they were read from.
    pub fn settings<A: RunSettings>(&self, out: &Path) -> Result<A> {
        let mut a: A = serde_json::from_value(self.args.clone())
            .with_context(|| format!("{}: invalid training state: its settings", self.path.display()))?;
        a.set_out(out);
        Ok(a)
    }

    /// Puts the saved weights and moments into `params` and `opt` after checking that the run is
    /// the same (tensor names and shapes, data).
    pub fn restore(
        &self,
        gpu: &Gpu,
        data_fingerprint: &str,
        params: &[(String, &GpuTensor, &GpuTensor)],
        opt: &mut Optimizer,
    ) -> Result<()> {
        let p = self.path.display();
        if data_fingerprint != self.data_fingerprint {
            bail!(
                "{p}: the training or dev data differ from the run being resumed (files changed since it stopped?); \
                 resuming needs the same data"
            );
        }
        let names: Vec<&str> = params.iter().map(|x| x.0.as_str()).collect();
        if names != self.params.iter().map(String::as_str).collect::<Vec<_>>() {
            bail!("{p}: the trainable tensors differ from the saved ones");
        }
        for ((name, w, _), (m, v)) in params.iter().zip(&opt.moments) {
            for (prefix, t) in [("param", *w), ("exp_avg", m), ("exp_avg_sq", v)] {
                let data = self.tensors.get_checked(&format!("{prefix}.{name}"), &t.shape)?;
                t.write(gpu, &data)?;
            }
        }
        opt.step = u32::try_from(self.progress.step).context("step count")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::data::Format;
    use crate::train::fuse::{FuseArgs, FusionArgs, FusionPreset};
    use crate::train::{AdapterArgs, Columns, DataArgs, LoopArgs, OptimizerArgs, Preset, TrainArgs};
    use crate::types::Activation;

    fn round_trip<A: RunSettings + Clone + PartialEq + std::fmt::Debug>(a: &A, out: &Path) {
        let text = serde_json::to_string(a).unwrap();
        let mut b: A = serde_json::from_str(&text).unwrap();
        b.set_out(out);
        assert_eq!(&b, a, "{text}");
    }

    #[test]
    fn args_round_trip_through_json() {
        let a = TrainArgs {
            model: "/m".into(),
            train: "/t.csv".into(),
            out: "/o".into(),
            data: DataArgs {
                dev: Some("/d.csv".into()),
                max_train_examples: Some(7),
                columns: Columns {
                    text_pair_column: Some("b".into()),
                    format: Some(Format::Tsv),
                    ..Default::default()
                },
                ..Default::default()
            },
            adapter: AdapterArgs {
                config: Preset::Pfeiffer,
                non_linearity: Some(Activation::Gelu),
                ..Default::default()
            },
            optimizer: OptimizerArgs { lr: 3.3e-4, weight_decay: 0.01, ..Default::default() },
            run: LoopArgs { patience: Some(2), seed: u64::MAX, ..Default::default() },
            ..TrainArgs::default()
        };
        round_trip(&a, Path::new("/o"));
        let f = FuseArgs {
            model: "/m".into(),
            train: "/t.csv".into(),
            out: "/f".into(),
            fusion: FusionArgs {
                adapters: vec!["/a".into(), "/b".into()],
                fusion_config: FusionPreset::Static,
                temperature: true,
                name: "h".into(),
            },
            ..FuseArgs::default()
        };
        round_trip(&f, Path::new("/f"));
    }

    /// The settings as the hand-written JSON of the first resumable release saved them: the
    /// serde structs read them unchanged.
    #[test]
    fn settings_written_by_earlier_releases_still_read() {
        let old = r#"{"adapter_name":"task","batch_size":5,"config":"houlsby","dev":"/d.csv","dev_split":0.1,
            "epochs":3,"format":null,"label_column":"label","lr":0.004999999888241291,"max_dev_examples":null,
            "max_grad_norm":1.0,"max_length":16,"max_train_examples":null,"model":"/m","non_linearity":"swish",
            "patience":null,"reduction_factor":4.0,"seed":3,"text_column":"text","text_pair_column":null,
            "train":"/t.csv","warmup_ratio":0.0,"weight_decay":0.0}"#;
        let v: Value = serde_json::from_str(old).unwrap();
        let mut a: TrainArgs = serde_json::from_value(v.clone()).unwrap();
        a.set_out(Path::new("/o"));
        assert_eq!(a.optimizer.lr, 5e-3);
        assert_eq!(a.adapter.non_linearity, Some(Activation::Silu));
        assert_eq!((a.run.batch_size, a.run.seed, a.data.max_length), (5, 3, 16));
        assert_eq!(a.data.dev.as_deref(), Some(Path::new("/d.csv")));
        // And are written back with the same keys and values.
        assert_eq!(serde_json::to_value(&a).unwrap(), v);
    }
}
