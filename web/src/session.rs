//! What the page calls (wasm-bindgen): open the GPU, load a model folder from the files a user
//! picked (or the page fetched), train, predict a sentence, export the adapter as a zip.
//!
//! A call holds the state for as long as it runs, awaits included: that is the "one call at a
//! time" rule, and a second call meanwhile gets a "busy" error from `try_borrow_mut` (no panic).
#![allow(clippy::await_holding_refcell_ref)]

use crate::trainer::{self, StepReport, Task, TrainOptions, TrainReport};
use anyhow::{anyhow, bail, Context, Result};
use peft_wgpu::formats::{BertConfig, WeightFile};
use peft_wgpu::gpu::{Gpu, GpuOptions};
use peft_wgpu::model::encoder::Encoder;
use peft_wgpu::model::load;
use peft_wgpu::train::data::{self, Example};
use peft_wgpu::train::tokenizer::{Tokenizer, TokenizerFiles};
use peft_wgpu::train::AdapterTrainee;
use peft_wgpu::WeightPrecision;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use wasm_bindgen::prelude::*;

struct Model {
    /// The folder's name (the adapter's `model_name`).
    name: String,
    cfg: BertConfig,
    enc: Encoder,
    tokenizer: Tokenizer,
    pad: u32,
}

struct Trained {
    trainee: AdapterTrainee,
    labels: Vec<String>,
}

struct Inner {
    gpu: Arc<Gpu>,
    /// The model folder's files the page added, by file name.
    files: HashMap<String, Vec<u8>>,
    model: Option<Model>,
    trained: Option<Trained>,
}

/// One page's engine: the GPU, the model and the trained adapter.
#[wasm_bindgen]
pub struct Session {
    inner: Rc<RefCell<Inner>>,
}

fn js_error(e: anyhow::Error) -> JsValue {
    JsError::new(&format!("{e:#}")).into()
}

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).context("internal: serializing to JSON")
}

impl Session {
    /// The state, unless a call that has not finished holds it (the page runs one at a time).
    fn lock(inner: &Rc<RefCell<Inner>>) -> Result<std::cell::RefMut<'_, Inner>> {
        inner.try_borrow_mut().map_err(|_| anyhow!("busy: the previous call (training?) has not finished"))
    }
}

#[wasm_bindgen]
impl Session {
    /// Opens the browser's GPU (WebGPU), with the limits the browser grants.
    pub async fn open() -> Result<Session, JsValue> {
        // No threads in the browser: the tokenizer encodes batches on this one.
        tokenizers::utils::parallelism::set_parallelism(false);
        let gpu = Gpu::open(&GpuOptions::default()).await.map_err(js_error)?;
        let inner = Inner { gpu, files: HashMap::new(), model: None, trained: None };
        Ok(Session { inner: Rc::new(RefCell::new(inner)) })
    }

    /// The adapter's name, backend and driver, as `peft info` prints them.
    pub fn gpu_name(&self) -> String {
        self.inner.borrow().gpu.description.summary()
    }

    /// The limits and features the kernels care about, and the kernels chosen, one per line.
    pub fn gpu_details(&self) -> String {
        let inner = self.inner.borrow();
        let mut lines = inner.gpu.description.details();
        lines.push(format!("policy: {}", inner.gpu.policy()));
        lines.join("\n")
    }

    /// Adds one file of the model folder (`config.json`, `model.safetensors`, `vocab.txt`,
    /// `tokenizer.json`, `tokenizer_config.json`; others are kept and ignored).
    pub fn add_file(&self, name: String, bytes: Vec<u8>) -> Result<(), JsValue> {
        let mut inner = Self::lock(&self.inner).map_err(js_error)?;
        let base = name.rsplit('/').next().unwrap_or(&name).to_string();
        inner.files.insert(base, bytes);
        Ok(())
    }

    /// Loads the model from the files added (then forgets them); returns a line about it.
    pub fn load_model(&self, folder: String) -> Result<String, JsValue> {
        let mut inner = Self::lock(&self.inner).map_err(js_error)?;
        load_model(&mut inner, &folder).map_err(js_error)
    }

    /// Trains a Houlsby adapter + classification head on `train_csv` (columns `text,label`;
    /// `dev_csv` empty: a seeded dev split of it), with `options` (JSON, [`TrainOptions`]);
    /// `progress` is called with each step's JSON. Resolves to the training report (JSON).
    pub fn train(
        &self,
        train_csv: String,
        dev_csv: String,
        options: String,
        progress: js_sys::Function,
    ) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut inner = Self::lock(&inner).map_err(js_error)?;
            let report = train(&mut inner, &train_csv, &dev_csv, &options, &progress).await.map_err(js_error)?;
            Ok(JsValue::from_str(&report))
        })
    }

    /// The trained adapter's prediction for `text`: `{label, probabilities, logits, labels}` (JSON).
    pub fn predict(&self, text: String) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut inner = Self::lock(&inner).map_err(js_error)?;
            Ok(JsValue::from_str(&predict(&mut inner, &text).await.map_err(js_error)?))
        })
    }

    /// The adapter folder in AdapterHub's format (what `peft train` writes) as a zip, its files
    /// under `folder/`.
    pub fn export_zip(&self, folder: String) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let inner = Self::lock(&inner).map_err(js_error)?;
            let zip = export(&inner, &folder).await.map_err(js_error)?;
            Ok(js_sys::Uint8Array::from(zip.as_slice()).into())
        })
    }
}

fn load_model(inner: &mut Inner, folder: &str) -> Result<String> {
    let files = std::mem::take(&mut inner.files);
    let text = |name: &str| -> Result<Option<String>> {
        files
            .get(name)
            .map(|b| String::from_utf8(b.clone()).with_context(|| format!("{folder}/{name}: not UTF-8 text")))
            .transpose()
    };
    let config = text("config.json")?.ok_or_else(|| anyhow!("{folder}: no config.json among the files picked"))?;
    let cfg = BertConfig::from_json_str(&config, &format!("{folder}/config.json"))?;
    let weights = files
        .get("model.safetensors")
        .ok_or_else(|| anyhow!("{folder}: no model.safetensors among the files picked"))?;
    let file = WeightFile::from_bytes(format!("{folder}/model.safetensors"), weights.clone())?;
    let tok_files = TokenizerFiles {
        folder: PathBuf::from(folder),
        tokenizer_json: files.get("tokenizer.json").cloned(),
        vocab_txt: files.get("vocab.txt").cloned(),
        tokenizer_config: text("tokenizer_config.json")?,
    };
    let tokenizer = Tokenizer::for_model_files(&tok_files, &cfg, cfg.max_sequence_length())?;
    inner.model = None;
    inner.trained = None;
    let enc = load::encoder_from_checkpoint(&inner.gpu, &cfg, file, None, WeightPrecision::F32)?;
    let line = format!(
        "{folder}: {} ({} layers, hidden {}, vocabulary {})",
        cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
    );
    let pad = data::pad_id(&tokenizer);
    inner.model = Some(Model { name: folder.to_string(), cfg, enc, tokenizer, pad });
    Ok(line)
}

async fn train(
    inner: &mut Inner,
    train_csv: &str,
    dev_csv: &str,
    options: &str,
    progress: &js_sys::Function,
) -> Result<String> {
    let o: TrainOptions = if options.trim().is_empty() {
        TrainOptions::default()
    } else {
        serde_json::from_str(options).context("training options")?
    };
    let Inner { gpu, model, trained, .. } = inner;
    let m = model.as_mut().ok_or_else(|| anyhow!("load a model first"))?;
    m.tokenizer.set_max_length(o.max_length.min(m.cfg.max_sequence_length()))?;
    let dev = (!dev_csv.trim().is_empty()).then_some(dev_csv.as_bytes());
    let task = Task::parse(&m.tokenizer, train_csv.as_bytes(), dev, &o)?;
    let plan = trainer::memory_plan(gpu, &m.cfg, &task, &o)?;
    if plan.resident_layers() != m.enc.store.slots() || plan.precision != m.enc.store.precision() {
        // Other layer slots or weights in another precision: the encoder is loaded again (the old
        // one freed first).
        let Some(old) = model.take() else { bail!("internal: the model went away") };
        let Model { name, cfg, enc, tokenizer, pad } = old;
        let enc = enc
            .reload(plan.resident_layers(), plan.precision)
            .context("loading the model again for the memory plan")?;
        *model = Some(Model { name, cfg, enc, tokenizer, pad });
    }
    let m = model.as_mut().ok_or_else(|| anyhow!("internal: the model went away"))?;
    m.enc.follow(&plan);
    let tell = |s: &StepReport| {
        if let Ok(j) = json(s) {
            let _ = progress.call1(&JsValue::NULL, &JsValue::from_str(&j));
        }
    };
    *trained = None;
    let (trainee, report): (AdapterTrainee, TrainReport) =
        trainer::train(gpu, &m.cfg, &m.name, &mut m.enc, m.pad, &task, &o, &tell).await?;
    let report = TrainReport { memory: plan.to_string(), ..report };
    *trained = Some(Trained { trainee, labels: task.labels.labels.clone() });
    json(&report)
}

#[derive(serde::Serialize)]
struct Prediction {
    label: String,
    probabilities: Vec<f64>,
    logits: Vec<f32>,
    labels: Vec<String>,
}

async fn predict(inner: &mut Inner, text: &str) -> Result<String> {
    let Inner { gpu, model, trained, .. } = inner;
    let (Some(m), Some(t)) = (model.as_mut(), trained.as_ref()) else { bail!("train an adapter first") };
    if text.trim().is_empty() {
        bail!("type a sentence to classify");
    }
    let tokens = data::tokenize(&m.tokenizer, &[Example { text: text.to_string(), pair: None, label: None, line: 0 }])?;
    let rows = trainer::logits(gpu, &mut m.enc, &t.trainee, &tokens, m.pad, 1).await?;
    let logits = rows.into_iter().next().ok_or_else(|| anyhow!("internal: no logits"))?;
    let top = logits.iter().map(|&x| x as f64).fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = logits.iter().map(|&x| (x as f64 - top).exp()).collect();
    let sum: f64 = exps.iter().sum();
    let probabilities: Vec<f64> = exps.iter().map(|e| e / sum).collect();
    let best = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap_or(0);
    json(&Prediction { label: t.labels[best].clone(), probabilities, logits, labels: t.labels.clone() })
}

async fn export(inner: &Inner, folder: &str) -> Result<Vec<u8>> {
    let Some(t) = inner.trained.as_ref() else { bail!("train an adapter first") };
    let files = crate::export::adapter_files(&inner.gpu, &t.trainee, &t.labels).await?;
    crate::export::zip(folder, &files)
}
