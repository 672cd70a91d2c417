//! What the browser build (`web/`) uses of the library, checked natively against the folder-based
//! paths the CLI uses: the tokenizer and the encoder built from in-memory files equal the ones
//! built from the folder, the awaitable read-backs equal the blocking ones, and a step submitted
//! then awaited equals `train_step`. (The browser itself: `scripts/web-test.sh`.)

mod common;
use common::fixtures;
use peft_wgpu::formats::adapterhub::{BottleneckConfig, HeadConfig};
use peft_wgpu::formats::{BertConfig, WeightFile};
use peft_wgpu::gpu::GpuTensor;
use peft_wgpu::kernels::optim::{AdamW, LinearSchedule};
use peft_wgpu::kernels::test_support::gpu;
use peft_wgpu::model::encoder::{Setup, Targets};
use peft_wgpu::model::load;
use peft_wgpu::train::checkpoint;
use peft_wgpu::train::data::{self, Example};
use peft_wgpu::train::tokenizer::{Tokenizer, TokenizerFiles};
use peft_wgpu::train::trainer::submit_train_step;
use peft_wgpu::train::{new_adapter_with_head, train_step, Optimizer};
use peft_wgpu::Activation;
use std::fs;
use std::path::PathBuf;

/// tiny-bert's base with the browser test's vocabulary, as a folder.
fn tiny_folder(dir: &std::path::Path) -> PathBuf {
    let m = dir.join("model");
    fs::create_dir_all(&m).unwrap();
    for f in ["config.json", "model.safetensors"] {
        fs::copy(fixtures::tiny().join("base").join(f), m.join(f)).unwrap();
    }
    fs::copy(fixtures::fixtures().join("web/vocab.txt"), m.join("vocab.txt")).unwrap();
    m
}

fn examples() -> Vec<Example> {
    let csv = fs::read(fixtures::fixtures().join("web/train.csv")).unwrap();
    data::parse_examples("train.csv".as_ref(), &csv, data::Format::Csv, &Default::default()).unwrap()
}

#[test]
fn tokenizer_from_files_equals_tokenizer_from_folder() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_folder(dir.path());
    let cfg = BertConfig::from_model_dir(&m).unwrap();
    let from_folder = Tokenizer::for_model(&m, &cfg, 16).unwrap();
    let files = TokenizerFiles {
        folder: m.clone(),
        vocab_txt: Some(fs::read(m.join("vocab.txt")).unwrap()),
        ..Default::default()
    };
    let from_files = Tokenizer::for_model_files(&files, &cfg, 16).unwrap();
    let ex = examples();
    assert_eq!(data::tokenize(&from_files, &ex).unwrap(), data::tokenize(&from_folder, &ex).unwrap());
    assert!(data::tokenize(&from_files, &ex).unwrap().iter().all(|t| !t.ids.contains(&1)), "no [UNK] in the fixture");
    // Neither tokenizer file: a clear error naming the folder.
    let none = TokenizerFiles { folder: m.clone(), ..Default::default() };
    let err = format!("{:#}", Tokenizer::for_model_files(&none, &cfg, 16).unwrap_err());
    assert!(err.contains("no tokenizer.json or vocab.txt"), "{err}");
}

#[test]
fn encoder_from_bytes_and_awaited_read_backs_equal_the_folder_and_blocking_ones() {
    let g = gpu();
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_folder(dir.path());
    let (cfg, mut from_folder) = load::load_encoder(&g, &m, None).unwrap();
    let bytes = fs::read(m.join("model.safetensors")).unwrap();
    let mut from_bytes = load::encoder_from_checkpoint(
        &g,
        &cfg,
        WeightFile::from_bytes("model.safetensors", bytes).unwrap(),
        None,
        Default::default(),
    )
    .unwrap();
    let tok = Tokenizer::for_model(&m, &cfg, 16).unwrap();
    let ex = examples();
    let tokens = data::tokenize(&tok, &ex).unwrap();
    let labels: Vec<u32> = (0..ex.len() as u32).map(|i| i % 2).collect();
    let bn = BottleneckConfig::houlsby(4.0, Activation::Silu);
    let names = vec!["negative".to_string(), "positive".to_string()];
    let (set, head) = new_adapter_with_head(&g, &cfg, &bn, "task", &HeadConfig::classification(&names), 3).unwrap();
    let idx: Vec<usize> = (0..6).collect();
    let b = data::Batch::new(&tokens, Some(&labels), &idx, data::Padding::to_longest(0));
    let setup = Setup::Adapter(&set);
    let a = from_folder.pass(&setup, &head, &b.inputs(), Some(&b.labels), false, false).unwrap();
    let mut rec = g.batch();
    let r = from_bytes.record(&mut rec, &setup, &head, &b.inputs(), Some(&b.labels), false, None).unwrap();
    let loss = r.loss.clone().unwrap();
    let values = pollster::block_on(rec.submit_with_readback(&[&r.logits, &loss]).unwrap().wait_async()).unwrap();
    assert_eq!(values[0], a.logits, "logits: awaited read-back of the in-memory encoder vs the folder's pass");
    assert_eq!(values[1][0], a.loss.unwrap());
    let awaited = pollster::block_on(r.logits.to_vec_async(&g)).unwrap();
    assert_eq!(awaited, r.logits.to_vec(&g).unwrap());
    // The library's adapter builder from values read back beforehand (the browser's export) is
    // the blocking one.
    let read = |t: &GpuTensor| t.to_vec(&g);
    let with = checkpoint::to_adapterhub_with(&read, &set, &bn, &head, &names, cfg.hidden_size, "m").unwrap();
    let blocking = checkpoint::to_adapterhub(&g, &set, &bn, &head, &names, cfg.hidden_size, "m").unwrap();
    assert_eq!(with.tensors(), blocking.tensors());
    assert_eq!(with.saved.to_json(), blocking.saved.to_json());
}

#[test]
fn a_submitted_then_awaited_step_is_train_step() {
    let g = gpu();
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_folder(dir.path());
    let cfg = BertConfig::from_model_dir(&m).unwrap();
    let tok = Tokenizer::for_model(&m, &cfg, 16).unwrap();
    let ex = examples();
    let tokens = data::tokenize(&tok, &ex).unwrap();
    let labels: Vec<u32> = (0..ex.len() as u32).map(|i| i % 2).collect();
    let b = data::Batch::new(&tokens, Some(&labels), &[0, 1, 2, 3, 4], data::Padding::to_longest(0));
    let bn = BottleneckConfig::houlsby(4.0, Activation::Silu);
    let head_cfg = HeadConfig::classification(&["a".to_string(), "b".to_string()]);
    let run = |submitted: bool| {
        let (mut enc, mut t) = (load::load_encoder(&g, &m, None).unwrap().1, web_trainee(&g, &cfg, &bn, &head_cfg));
        let opt = AdamW { lr: 5e-3, ..AdamW::default() };
        let schedule = LinearSchedule { base_lr: 5e-3, warmup_steps: 0, total_steps: 3 };
        let mut o = Optimizer::new(&g, &peft_wgpu::train::Trainee::params(&t), opt, schedule, 1.0).unwrap();
        (0..3)
            .map(|_| {
                let s = if submitted {
                    let step =
                        submit_train_step(&g, &mut enc, &mut t, &mut o, &b.inputs(), Targets::Classes(&b.labels), None);
                    pollster::block_on(step.unwrap().wait_async()).unwrap()
                } else {
                    train_step(&g, &mut enc, &mut t, &mut o, &b.inputs(), &b.labels, None).unwrap()
                };
                (s.loss, s.grad_norm, s.lr)
            })
            .collect::<Vec<_>>()
    };
    let (blocking, awaited) = (run(false), run(true));
    assert_eq!(blocking, awaited);
    assert!(blocking.iter().all(|s| s.0.is_finite() && s.1 > 0.0), "{blocking:?}");
}

/// A trainee as the browser's (an adapter + head).
struct Trainee {
    set: peft_wgpu::model::adapters::AdapterSet,
    head: peft_wgpu::model::adapters::ClassificationHead,
}

fn web_trainee(
    g: &std::sync::Arc<peft_wgpu::Gpu>,
    cfg: &BertConfig,
    bn: &BottleneckConfig,
    head: &HeadConfig,
) -> Trainee {
    let (set, head) = new_adapter_with_head(g, cfg, bn, "task", head, 3).unwrap();
    Trainee { set, head }
}

impl peft_wgpu::train::Trainee for Trainee {
    fn setup(&self) -> Setup<'_> {
        Setup::Adapter(&self.set)
    }
    fn head(&self) -> &peft_wgpu::model::adapters::ClassificationHead {
        &self.head
    }
    fn params(&self) -> Vec<(String, &GpuTensor, &GpuTensor)> {
        self.set.named().into_iter().chain(self.head.named()).collect()
    }
    fn save(
        &mut self,
        _: &std::sync::Arc<peft_wgpu::Gpu>,
        _: &std::path::Path,
        _: peft_wgpu::formats::adapterhub::WeightsFormat,
        _: &[String],
    ) -> anyhow::Result<()> {
        unreachable!("not saved")
    }
}
