//! The terminal's [`Reporter`]: lines on standard output, notes on standard error, and a progress
//! bar while training (on a terminal; elsewhere a plain line every ten steps).

use crate::train::report::{Reporter, StepReport};
use indicatif::{ProgressBar, ProgressStyle};

/// What `peft train` and `peft fuse` show while they run.
#[derive(Default)]
pub struct Terminal {
    bar: Option<ProgressBar>,
}

impl Terminal {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Reporter for Terminal {
    fn message(&mut self, line: &str) {
        match &self.bar {
            Some(pb) => pb.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    fn note(&mut self, line: &str) {
        match &self.bar {
            Some(pb) => pb.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    fn start(&mut self, total: usize, done: usize) {
        let pb = ProgressBar::new(total as u64);
        pb.set_style(
            ProgressStyle::with_template("{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} steps, ETA {eta} | {msg}")
                .expect("valid template"),
        );
        pb.set_position(done as u64);
        self.bar = Some(pb);
    }

    fn epoch(&mut self, epoch: usize, epochs: usize) {
        if let Some(pb) = &self.bar {
            pb.set_prefix(format!("epoch {epoch}/{epochs}"));
        }
    }

    fn step(&mut self, s: &StepReport) {
        let Some(pb) = &self.bar else { return };
        let (loss, lr, tps, total) = (s.loss, s.lr, s.tokens_per_second, s.total);
        pb.set_message(format!("loss {loss:.4} lr {lr:.2e} {tps:.0} tok/s"));
        pb.inc(1);
        if pb.is_hidden() && (s.step % 10 == 0 || s.step == 1) {
            // No terminal (logs, CI): a plain line now and then instead of the bar.
            let eta = (total - s.step) as f64 * s.train_secs / s.step as f64;
            println!("step {}/{total}: loss {loss:.4} lr {lr:.2e} {tps:.0} tok/s, ETA {eta:.0} s", s.step);
        }
    }

    fn finish(&mut self) {
        if let Some(pb) = self.bar.take() {
            pb.finish_and_clear();
        }
    }
}
