//! Classification metrics (accuracy, macro-F1, confusion counts), the JSONL metrics log, and the
//! PNG plot of a training run (loss per step, dev accuracy per epoch).
//!
//! The plot needs no fonts: `plotters` draws the lines, and the few labels (titles, tick values)
//! are drawn from a built-in 5×7 pixel font, so nothing depends on what a machine has installed.
//!
//! Files: `scores` (confusion counts, accuracy, macro-F1), `log` (the JSONL metrics log and the
//! curves read back from it), `plot` (the training plot), `heatmap` (the fusion heat map), `font`
//! (the 5×7 pixel font both draw their labels with).

mod font;
pub mod heads;
mod heatmap;
mod log;
mod plot;
mod scores;

pub use heatmap::{plot_heatmap, render_heatmap_png};
pub use log::{MetricsLog, TrainingCurves};
pub use plot::{check_png, plot_training, render_training_png, PLOT_SIZE};
pub use scores::{accuracy, argmax_rows, macro_f1, primary_metric, ClassScores, Confusion, HeadScores, Scores};
