//! Dropout in training passes on the tiny fixture model (Houlsby adapter + head): it changes the
//! training loss, each step draws other masks, the same step the same ones (bit for bit), rates of
//! 0 are the plain pass, evaluation passes are never affected, and the gradients of a pass with
//! dropout are those of its loss (a directional finite difference through the same masks).
//! Recompute / layer chunks / streaming with dropout: tests/memory.rs; resume and `peft train`'s
//! layer chunks: tests/reliability_resume.rs.

mod common;
use common::*;
use peft_wgpu::model::encoder::{DropoutRates, PassDropout, PassOutput, Setup};
use peft_wgpu::model::{config::BertConfig, load};

struct Case {
    enc: peft_wgpu::model::encoder::Encoder,
    set: peft_wgpu::model::adapters::AdapterSet,
    head: peft_wgpu::model::adapters::ClassificationHead,
    inputs: peft_wgpu::model::encoder::Inputs,
    labels: Vec<u32>,
}

fn case() -> Case {
    let g = gpu();
    let dir = fixtures().join("tiny-bert/houlsby");
    let model = fixtures().join("tiny-bert/base");
    let cfg = BertConfig::from_model_dir(&model).unwrap();
    let (set, head) = load::load_adapter(&g, &dir.join("adapter"), &cfg).unwrap();
    let (inputs, labels) = peft_wgpu::train::data::read_inputs_json(&dir.join("inputs.json")).unwrap();
    let (_, enc) = load::load_encoder(&g, &model, None).unwrap();
    Case { enc, set, head: head.unwrap(), inputs, labels }
}

fn dropout(p: f64, step: u32) -> PassDropout {
    PassDropout { rates: DropoutRates::uniform(p).unwrap(), seed: 99, step }
}

impl Case {
    fn pass(&mut self, backward: bool, d: Option<PassDropout>) -> PassOutput {
        let setup = Setup::Adapter(&self.set);
        let labels = Some(self.labels.as_slice());
        self.enc.pass_with_dropout(&setup, &self.head, &self.inputs, labels, backward, true, d).unwrap()
    }

    /// Every trainable gradient, concatenated.
    fn grads(&self) -> Vec<f32> {
        let named: Vec<_> = self.set.named().into_iter().chain(self.head.named()).collect();
        named.iter().flat_map(|(_, _, g)| download(g)).collect()
    }
}

fn bits(o: &PassOutput) -> (Vec<u32>, u32, Vec<u32>) {
    let b = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    (b(&o.logits), o.loss.unwrap().to_bits(), b(o.last_hidden_state.as_ref().unwrap()))
}

#[test]
fn dropout_changes_training_passes_only() {
    let mut c = case();
    let eval = bits(&c.pass(false, None));
    let plain = bits(&c.pass(true, None));
    assert_eq!(eval, plain, "a pass without dropout is the same with or without backward");
    let step1 = bits(&c.pass(true, Some(dropout(0.1, 1))));
    let again = bits(&c.pass(true, Some(dropout(0.1, 1))));
    let step2 = bits(&c.pass(true, Some(dropout(0.1, 2))));
    assert_ne!(step1.1, plain.1, "dropout did not change the loss");
    assert_ne!(step1.2, plain.2, "dropout did not change the last hidden state");
    assert_eq!(step1, again, "the same step drew other masks");
    assert_ne!(step1.1, step2.1, "another step drew the same masks");
    // Rates of 0 are the plain pass, bit for bit.
    assert_eq!(bits(&c.pass(true, Some(dropout(0.0, 1)))), plain);
    // Evaluation after training passes with dropout is unaffected by them.
    assert_eq!(bits(&c.pass(false, None)), eval);
    let grads_plain = {
        c.pass(true, None);
        c.grads()
    };
    c.pass(true, Some(dropout(0.1, 1)));
    assert_ne!(c.grads(), grads_plain, "dropout did not change the gradients");
    println!("loss: plain {} / dropout 0.1 {}", f32::from_bits(plain.1), f32::from_bits(step1.1));
}

/// The gradients of a pass with dropout against its loss: `L(w + h·v) − L(w − h·v) ≈ 2h ⟨∇L, v⟩`
/// for a random direction `v` over every trainable tensor, the masks the same at both points (they
/// depend on the key only). A mask drawn differently in backward than in forward fails this.
#[test]
fn gradients_with_dropout_are_the_loss_gradient() {
    let mut c = case();
    let d = Some(dropout(0.2, 5));
    c.pass(true, d);
    let grad = c.grads();
    let named: Vec<_> = c.set.named().into_iter().chain(c.head.named()).collect();
    let w0: Vec<Vec<f32>> = named.iter().map(|(_, w, _)| download(w)).collect();
    let mut rng = rng(17);
    let v: Vec<Vec<f32>> = w0.iter().map(|w| rand_f32(&mut rng, w.len(), 1.0)).collect();
    let directional: f64 = grad.iter().zip(v.iter().flatten()).map(|(&g, &x)| g as f64 * x as f64).sum();
    let h = 1e-3f32;
    let mut at = |sign: f32| {
        for ((_, w, _), (w0, v)) in named.iter().zip(w0.iter().zip(&v)) {
            let moved: Vec<f32> = w0.iter().zip(v).map(|(a, b)| a + sign * h * b).collect();
            w.write(&gpu(), &moved).unwrap();
        }
        c.enc
            .pass_with_dropout(&Setup::Adapter(&c.set), &c.head, &c.inputs, Some(&c.labels), false, false, d)
            .unwrap()
            .loss
            .unwrap() as f64
    };
    let (up, down) = (at(1.0), at(-1.0));
    let numeric = (up - down) / (2.0 * h as f64);
    let rel = (numeric - directional).abs() / directional.abs().max(1e-12);
    println!("directional derivative: analytic {directional:.6e}, central difference {numeric:.6e}, rel {rel:.2e}");
    // f32 losses of ~1 with h = 1e-3: the difference quotient carries ~1e-4 of rounding noise.
    assert!(rel < 1e-2, "gradient with dropout: analytic {directional} vs numeric {numeric}");
}
