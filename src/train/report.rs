//! How training tells what it does: the library calls a [`Reporter`] and never prints from the
//! loop. [`PlainReporter`] prints the lines (for the library API and tests); the command line
//! brings its own with a progress bar (`crate::cli::report`).

/// One finished training step, for progress displays.
#[derive(Clone, Copy, Debug)]
pub struct StepReport {
    /// Steps done in all (1-based), of `total`.
    pub step: usize,
    pub total: usize,
    pub loss: f32,
    pub lr: f32,
    /// Real (unpadded) tokens per second of training so far.
    pub tokens_per_second: f64,
    /// Seconds spent in training steps so far (for an ETA).
    pub train_secs: f64,
}

/// Where the training loop's lines, notes and progress go.
pub trait Reporter {
    /// A line of the run's story for standard output: device, data, plan, each epoch's scores.
    fn message(&mut self, line: &str);
    /// A note or warning for standard error (truncated texts, a stopped run).
    fn note(&mut self, line: &str);
    /// The loop starts: `total` steps in all, `done` of them already (a resumed run).
    fn start(&mut self, _total: usize, _done: usize) {}
    /// Epoch `epoch` of `epochs` starts.
    fn epoch(&mut self, _epoch: usize, _epochs: usize) {}
    /// A training step finished.
    fn step(&mut self, _s: &StepReport) {}
    /// The loop ended (before its last lines).
    fn finish(&mut self) {}
}

/// Prints messages to standard output and notes to standard error; no progress display.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainReporter;

impl Reporter for PlainReporter {
    fn message(&mut self, line: &str) {
        println!("{line}");
    }

    fn note(&mut self, line: &str) {
        eprintln!("{line}");
    }
}

/// Drops everything (benchmarks, tests that only want the numbers).
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Reporter for Silent {
    fn message(&mut self, _line: &str) {}
    fn note(&mut self, _line: &str) {}
}
