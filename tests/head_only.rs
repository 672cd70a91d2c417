//! `peft train --config none`: the head alone on the frozen base (the fusion demo's baseline),
//! saved as an adapter left out of every layer so that eval / predict load it as usual.

mod common;
use common::*;
use peft_wgpu::model::config::BertConfig;
use peft_wgpu::train::{self, AdapterArgs, DataArgs, LoopArgs, OptimizerArgs, Preset, TrainArgs};

#[test]
fn head_only_trains_the_head_and_loads_back() {
    let g = gpu();
    let model = peft_wgpu::train::cache::ensure_default_model().unwrap();
    let cfg = BertConfig::from_model_dir(&model).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pos = ["a wonderful, moving film", "great acting", "I loved it", "brilliant and funny", "a delight"];
    let neg = ["a dull, boring mess", "terrible acting", "I hated it", "awful and tedious", "a waste of time"];
    let mut csv = String::from("text,label\n");
    for (p, n) in pos.iter().zip(&neg) {
        csv.push_str(&format!("\"{p}\",positive\n\"{n}\",negative\n"));
    }
    let data = dir.path().join("train.csv");
    std::fs::write(&data, &csv).unwrap();
    let out = dir.path().join("head-only");
    let args = TrainArgs {
        model: model.clone(),
        train: data.clone(),
        data: DataArgs { dev: Some(data.clone()), max_length: 16, ..Default::default() },
        adapter: AdapterArgs { config: Preset::None, ..Default::default() },
        run: LoopArgs { epochs: 4, batch_size: 5, ..Default::default() },
        optimizer: OptimizerArgs { lr: 3e-3, ..Default::default() },
        out: out.clone(),
        ..TrainArgs::default()
    };
    let s = train::train(&g, &args).unwrap();
    let (d, c) = (cfg.hidden_size, 2);
    assert_eq!(s.trainable_parameters, d * d + d + c * d + c, "only the head trains");
    assert_eq!(s.steps, 8);
    assert!(s.train_losses.iter().all(|l| l.is_finite()));
    let last_epoch: f32 = s.train_losses[6..].iter().sum::<f32>() / 2.0;
    assert!(last_epoch < s.train_losses[0], "the head's loss did not fall: {:?}", s.train_losses);

    // No adapter tensors; the config leaves every layer out.
    let w = peft_wgpu::formats::weights::WeightFile::open(out.join("adapter.safetensors")).unwrap();
    assert!(w.names().is_empty(), "head-only run saved adapter tensors: {:?}", w.names());
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    let leave_out: Vec<u64> =
        v["config"]["leave_out"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(leave_out, (0..cfg.num_hidden_layers as u64).collect::<Vec<_>>());

    // Loads back through the ordinary adapter path: eval reproduces the best epoch's accuracy.
    let scores = train::evaluate(&g, &model, &out, &data, &Default::default(), 5, 16).unwrap();
    assert_eq!(scores.n, 10);
    assert!((scores.accuracy - s.best_accuracy).abs() < 1e-12, "eval {} vs best {}", scores.accuracy, s.best_accuracy);
}
