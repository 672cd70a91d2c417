//! Classification metrics (accuracy, macro-F1, confusion counts), the JSONL metrics log, and the
//! PNG plot of a training run (loss per step, dev accuracy per epoch).
//!
//! The plot needs no fonts: `plotters` draws the lines, and the few labels (titles, tick values)
//! are drawn from a built-in 5×7 pixel font, so nothing depends on what a machine has installed.

use anyhow::{bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;
use std::fmt;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Counts of (true label, predicted label) pairs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confusion {
    pub num_classes: usize,
    /// `counts[label * num_classes + predicted]`.
    pub counts: Vec<u64>,
}

/// Precision, recall and F1 of one class (0 where a ratio is 0/0, as scikit-learn reports it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Examples whose true label is this class.
    pub support: u64,
    /// Examples predicted as this class.
    pub predicted: u64,
}

impl Confusion {
    pub fn new(num_classes: usize) -> Self {
        Self { num_classes, counts: vec![0; num_classes * num_classes] }
    }

    /// From parallel label / prediction lists; grows past `num_classes` if an id is larger.
    pub fn from_predictions(labels: &[u32], preds: &[u32], num_classes: usize) -> Self {
        assert_eq!(labels.len(), preds.len(), "labels and predictions differ in length");
        let n = labels.iter().chain(preds).map(|&c| c as usize + 1).max().unwrap_or(0).max(num_classes);
        let mut c = Self::new(n);
        for (&l, &p) in labels.iter().zip(preds) {
            c.add(l, p);
        }
        c
    }

    /// Counts one example, growing the matrix when a class id is new.
    pub fn add(&mut self, label: u32, pred: u32) {
        let need = (label.max(pred) as usize) + 1;
        if need > self.num_classes {
            let mut grown = Self::new(need);
            for l in 0..self.num_classes {
                for p in 0..self.num_classes {
                    grown.counts[l * need + p] = self.get(l as u32, p as u32);
                }
            }
            *self = grown;
        }
        self.counts[label as usize * self.num_classes + pred as usize] += 1;
    }

    pub fn get(&self, label: u32, pred: u32) -> u64 {
        let (l, p) = (label as usize, pred as usize);
        if l < self.num_classes && p < self.num_classes {
            self.counts[l * self.num_classes + p]
        } else {
            0
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Correct predictions over all; 0 when there are none.
    pub fn accuracy(&self) -> f64 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        let correct: u64 = (0..self.num_classes).map(|c| self.counts[c * self.num_classes + c]).sum();
        correct as f64 / total as f64
    }

    /// Scores of every class id `0..num_classes`.
    pub fn per_class(&self) -> Vec<ClassScores> {
        let n = self.num_classes;
        (0..n)
            .map(|c| {
                let tp = self.counts[c * n + c];
                let support: u64 = (0..n).map(|p| self.counts[c * n + p]).sum();
                let predicted: u64 = (0..n).map(|l| self.counts[l * n + c]).sum();
                let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
                // 2tp / (2tp + fp + fn), which equals 2PR / (P + R) and is 0 where that is 0/0.
                ClassScores {
                    precision: ratio(tp, predicted),
                    recall: ratio(tp, support),
                    f1: ratio(2 * tp, support + predicted),
                    support,
                    predicted,
                }
            })
            .collect()
    }

    /// F1 averaged over the classes that occur among the labels or the predictions: scikit-learn's
    /// `f1_score(y_true, y_pred, average="macro")` with the labels inferred. A class that is
    /// present but never predicted counts with F1 = 0; a class in neither does not count.
    pub fn macro_f1(&self) -> f64 {
        let present: Vec<ClassScores> = self.per_class().into_iter().filter(|s| s.support + s.predicted > 0).collect();
        if present.is_empty() {
            return 0.0;
        }
        present.iter().map(|s| s.f1).sum::<f64>() / present.len() as f64
    }
}

/// Share of `preds` equal to `labels`; 0 for empty lists.
pub fn accuracy(labels: &[u32], preds: &[u32]) -> f64 {
    Confusion::from_predictions(labels, preds, 0).accuracy()
}

/// Macro-averaged F1 over the classes in `labels ∪ preds` (see [`Confusion::macro_f1`]).
pub fn macro_f1(labels: &[u32], preds: &[u32]) -> f64 {
    Confusion::from_predictions(labels, preds, 0).macro_f1()
}

/// What `peft eval` reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scores {
    pub accuracy: f64,
    pub macro_f1: f64,
    pub n: usize,
}

impl Scores {
    pub fn new(labels: &[u32], preds: &[u32]) -> Self {
        let c = Confusion::from_predictions(labels, preds, 0);
        Self { accuracy: c.accuracy(), macro_f1: c.macro_f1(), n: labels.len() }
    }
}

/// `accuracy=0.xxxx macro_f1=0.xxxx n=N`.
impl fmt::Display for Scores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "accuracy={:.4} macro_f1={:.4} n={}", self.accuracy, self.macro_f1, self.n)
    }
}

/// The index of each row's largest logit (`logits` is `[rows, num_labels]`, row-major). NaN
/// never wins; ties go to the lower index.
pub fn argmax_rows(logits: &[f32], num_labels: usize) -> Vec<u32> {
    if num_labels == 0 {
        return Vec::new();
    }
    logits
        .chunks(num_labels)
        .map(|row| {
            let mut best = 0usize;
            for (i, &x) in row.iter().enumerate() {
                if x > row[best] || row[best].is_nan() && !x.is_nan() {
                    best = i;
                }
            }
            best as u32
        })
        .collect()
}

/// Row-wise softmax (numerically stable, in f64) of `[rows, num_labels]` logits.
pub fn softmax_rows(logits: &[f32], num_labels: usize) -> Vec<f32> {
    if num_labels == 0 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks(num_labels) {
        let m = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let e: Vec<f64> = row.iter().map(|&x| (x as f64 - m).exp()).collect();
        let s: f64 = e.iter().sum();
        out.extend(e.iter().map(|&v| (v / s) as f32));
    }
    out
}

/// A JSON Lines log: one compact JSON value per line, each line written whole and flushed, so
/// the file can be followed (`tail -f`) while training runs and survives an interruption.
pub struct MetricsLog {
    file: File,
    path: PathBuf,
}

impl MetricsLog {
    /// Creates (or truncates) `path`, making its folder if needed.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).with_context(|| format!("creating folder {}", dir.display()))?;
        }
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { file, path: path.to_path_buf() })
    }

    /// Opens an existing log to continue it (a resumed run), first cutting it to `keep` bytes: the
    /// length it had when the run's state was saved.
    pub fn reopen(path: impl AsRef<Path>, keep: u64) -> Result<Self> {
        let path = path.as_ref();
        let file = fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening {} to continue it", path.display()))?;
        let len = file.metadata().with_context(|| format!("reading {}", path.display()))?.len();
        if len < keep {
            bail!("{}: {len} bytes, shorter than the {keep} it had at the checkpoint", path.display());
        }
        file.set_len(keep).with_context(|| format!("truncating {}", path.display()))?;
        Ok(Self { file, path: path.to_path_buf() })
    }

    /// Bytes written so far (the file's length).
    pub fn bytes_written(&self) -> Result<u64> {
        Ok(self.file.metadata().with_context(|| format!("reading {}", self.path.display()))?.len())
    }

    /// Appends `record` as one line.
    pub fn log(&mut self, record: &Value) -> Result<()> {
        let mut line = serde_json::to_string(record).context("serializing a metrics record")?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).with_context(|| format!("writing {}", self.path.display()))?;
        self.file.flush().with_context(|| format!("writing {}", self.path.display()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What [`plot_training`] draws.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainingCurves {
    /// `(step, training loss)`, steps counted from 1.
    pub loss: Vec<(usize, f64)>,
    /// `(epoch, dev accuracy)`, epochs counted from 1.
    pub dev_accuracy: Vec<(usize, f64)>,
    /// `(epoch, dev macro-F1)`; may be empty.
    pub dev_macro_f1: Vec<(usize, f64)>,
}

impl TrainingCurves {
    /// Rebuilds the curves from a metrics log: lines with numeric `step` and `loss` give the loss
    /// curve; lines with numeric `epoch` and `dev_accuracy` (and optionally `dev_macro_f1`) give
    /// the dev curves. Other lines and fields are ignored.
    pub fn from_metrics_log(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut c = Self::default();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value =
                serde_json::from_str(line).with_context(|| format!("{}:{}: invalid JSON", path.display(), i + 1))?;
            let int = |k: &str| v.get(k).and_then(Value::as_u64).map(|x| x as usize);
            let num = |k: &str| v.get(k).and_then(Value::as_f64);
            if let (Some(step), Some(loss)) = (int("step"), num("loss")) {
                c.loss.push((step, loss));
            }
            if let (Some(epoch), Some(acc)) = (int("epoch"), num("dev_accuracy")) {
                c.dev_accuracy.push((epoch, acc));
                if let Some(f1) = num("dev_macro_f1") {
                    c.dev_macro_f1.push((epoch, f1));
                }
            }
        }
        Ok(c)
    }
}

/// Plot size in pixels.
pub const PLOT_SIZE: (u32, u32) = (1100, 440);

/// Writes a PNG (atomically) with two panels: training loss per step (raw and smoothed) and dev
/// accuracy (and macro-F1) per epoch.
pub fn plot_training(path: impl AsRef<Path>, curves: &TrainingCurves) -> Result<()> {
    let path = path.as_ref();
    let png = render_training_png(curves).with_context(|| format!("drawing {}", path.display()))?;
    crate::formats::write_atomic(path, &png)
}

/// The PNG bytes [`plot_training`] writes.
pub fn render_training_png(curves: &TrainingCurves) -> Result<Vec<u8>> {
    let (w, h) = PLOT_SIZE;
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        draw_training(&root, curves).map_err(|e| anyhow::anyhow!("plotting: {e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("plotting: {e}"))?;
    }
    encode_png(&rgb, w, h)
}

/// RGB pixels, row-major, as PNG bytes.
fn encode_png(rgb: &[u8], w: u32, h: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().context("encoding PNG")?;
        writer.write_image_data(rgb).context("encoding PNG")?;
        writer.finish().context("encoding PNG")?;
    }
    Ok(out)
}

/// Writes a PNG heat map (atomically): one cell per `values[row][column]` in `[0, 1]`, shaded
/// from white to blue with its value printed, row and column names, a title and a color scale.
pub fn plot_heatmap(
    path: impl AsRef<Path>,
    title: &str,
    columns: &[String],
    rows: &[String],
    values: &[Vec<f64>],
) -> Result<()> {
    let path = path.as_ref();
    let png =
        render_heatmap_png(title, columns, rows, values).with_context(|| format!("drawing {}", path.display()))?;
    crate::formats::write_atomic(path, &png)
}

/// The PNG bytes [`plot_heatmap`] writes.
pub fn render_heatmap_png(title: &str, columns: &[String], rows: &[String], values: &[Vec<f64>]) -> Result<Vec<u8>> {
    if values.len() != rows.len() || values.iter().any(|r| r.len() != columns.len()) {
        bail!(
            "heat map: {} rows × {} columns of names, values {:?}",
            rows.len(),
            columns.len(),
            values.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }
    let name_w = columns.iter().map(|c| text_width(c)).max().unwrap_or(0);
    let cell_w = (name_w + 2 * CHAR_W).max(7 * CHAR_W);
    let cell_h = 3 * CHAR_H;
    let left = rows.iter().map(|r| text_width(r)).max().unwrap_or(0) + 2 * CHAR_W;
    let (top, bottom, right) = (4 * CHAR_H + 8, 4 * CHAR_H, 2 * CHAR_W);
    let grid_w = cell_w * columns.len() as i32;
    let w = (left + grid_w + right).max(text_width(title) + 3 * CHAR_W).max(left + 24 * CHAR_W + right);
    let h = top + cell_h * rows.len() as i32 + bottom;
    let (w, h) = (w as u32, h as u32);
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        draw_heatmap(&root, title, columns, rows, values, (left, top, cell_w, cell_h))
            .map_err(|e| anyhow::anyhow!("plotting: {e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("plotting: {e}"))?;
    }
    encode_png(&rgb, w, h)
}

/// White (0) to dark blue (1).
fn heat_color(v: f64) -> RGBColor {
    let t = if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 };
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * t).round() as u8;
    RGBColor(mix(255, LOSS_SMOOTH.0), mix(255, LOSS_SMOOTH.1), mix(255, LOSS_SMOOTH.2))
}

fn draw_heatmap(
    root: &Area,
    title: &str,
    columns: &[String],
    rows: &[String],
    values: &[Vec<f64>],
    (left, top, cell_w, cell_h): (i32, i32, i32, i32),
) -> DrawResult<()> {
    root.fill(&WHITE)?;
    draw_text(root, title, CHAR_W, 10, INK)?;
    for (c, name) in columns.iter().enumerate() {
        let x = left + c as i32 * cell_w + (cell_w - text_width(name)) / 2;
        draw_text(root, name, x, top - CHAR_H - 8, INK)?;
    }
    for (r, name) in rows.iter().enumerate() {
        let y = top + r as i32 * cell_h;
        draw_text(root, name, CHAR_W, y + (cell_h - CHAR_H) / 2, INK)?;
        for (c, &v) in values[r].iter().enumerate() {
            let x = left + c as i32 * cell_w;
            root.draw(&Rectangle::new([(x, y), (x + cell_w - 1, y + cell_h - 1)], heat_color(v).filled()))?;
            let s = if v.is_finite() { format!("{v:.3}") } else { "-".into() };
            let ink = if v > 0.55 { WHITE } else { INK };
            draw_text(root, &s, x + (cell_w - text_width(&s)) / 2, y + (cell_h - CHAR_H) / 2, ink)?;
        }
    }
    let bottom = top + rows.len() as i32 * cell_h;
    frame(root, (left, top), (left + cell_w * columns.len() as i32 - 1, bottom - 1))?;
    // Color scale: 0 ... 1.
    let (sx, sy, sw) = (left + 2 * CHAR_W, bottom + CHAR_H + 4, 16 * CHAR_W);
    draw_text(root, "0", left, sy, INK)?;
    for k in 0..sw {
        let c = heat_color(k as f64 / (sw - 1) as f64);
        root.draw(&PathElement::new(vec![(sx + k, sy), (sx + k, sy + CHAR_H)], c))?;
    }
    frame(root, (sx, sy), (sx + sw - 1, sy + CHAR_H))?;
    draw_text(root, "1", sx + sw + CHAR_W, sy, INK)?;
    Ok(())
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;
/// A line to draw: its points, its color, and whether each point gets a dot.
type Series<'a> = (&'a [(f64, f64)], RGBColor, bool);

const LOSS_RAW: RGBColor = RGBColor(160, 190, 230);
const LOSS_SMOOTH: RGBColor = RGBColor(20, 70, 160);
const ACC: RGBColor = RGBColor(215, 95, 20);
const F1: RGBColor = RGBColor(40, 140, 60);
const GRID: RGBColor = RGBColor(228, 228, 228);
const AXIS: RGBColor = RGBColor(90, 90, 90);
const INK: RGBColor = RGBColor(40, 40, 40);

/// Pixel size of one font dot, and so of a character cell (6×8 dots with spacing).
const DOT: i32 = 2;
const CHAR_W: i32 = 6 * DOT;
const CHAR_H: i32 = 7 * DOT;

fn draw_training(root: &Area, c: &TrainingCurves) -> DrawResult<()> {
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(PLOT_SIZE.0 / 2);
    // Loss panel.
    let loss: Vec<(f64, f64)> = c.loss.iter().filter(|(_, l)| l.is_finite()).map(|&(s, l)| (s as f64, l)).collect();
    let smooth = moving_average(&loss);
    let mut series: Vec<Series> = vec![(&loss, LOSS_RAW, false)];
    let mut titles: Vec<(String, RGBColor)> = vec![("TRAINING LOSS".into(), INK)];
    if let Some(s) = &smooth {
        series.push((s, LOSS_SMOOTH, false));
        titles = vec![("TRAINING LOSS:".into(), INK), ("RAW".into(), LOSS_RAW), ("SMOOTHED".into(), LOSS_SMOOTH)];
    }
    panel(root, &left, &titles, "STEP", &series, false, None, false)?;
    // Dev panel.
    let acc: Vec<(f64, f64)> =
        c.dev_accuracy.iter().filter(|(_, a)| a.is_finite()).map(|&(e, a)| (e as f64, a)).collect();
    let f1: Vec<(f64, f64)> =
        c.dev_macro_f1.iter().filter(|(_, a)| a.is_finite()).map(|&(e, a)| (e as f64, a)).collect();
    let mut series: Vec<Series> = vec![(&acc, ACC, true)];
    let mut titles = vec![("DEV ACCURACY".to_string(), ACC)];
    if !f1.is_empty() {
        series.push((&f1, F1, true));
        titles.push(("MACRO-F1".into(), F1));
    }
    panel(root, &right, &titles, "EPOCH", &series, true, Some((0.0, 1.0)), true)?;
    Ok(())
}

/// A trailing moving average over about 1/20 of the points (at least 2, at most 100), or `None`
/// when there are too few points for smoothing to say anything.
fn moving_average(points: &[(f64, f64)]) -> Option<Vec<(f64, f64)>> {
    if points.len() < 10 {
        return None;
    }
    let w = (points.len() / 20).clamp(2, 100);
    let mut sum = 0.0;
    let mut out = Vec::with_capacity(points.len());
    for (i, &(x, y)) in points.iter().enumerate() {
        sum += y;
        if i >= w {
            sum -= points[i - w].1;
        }
        out.push((x, sum / (i + 1).min(w) as f64));
    }
    Some(out)
}

/// One panel: titles (colored words) above, a framed plot with grid, tick values and the x axis
/// name below. `per_epoch`: room for a dot per point at both ends, and for a few points their
/// values (`label_points`).
fn panel(
    root: &Area,
    area: &Area,
    titles: &[(String, RGBColor)],
    x_name: &str,
    series: &[Series],
    per_epoch: bool,
    clamp_y: Option<(f64, f64)>,
    label_points: bool,
) -> DrawResult<()> {
    let (x0, y0) = area.get_base_pixel();
    let (aw, ah) = area.dim_in_pixel();
    let (aw, ah) = (aw as i32, ah as i32);
    let (m_left, m_right, m_top, m_bottom) = (96, 24, 44, 56);
    // Titles.
    let mut tx = x0 + m_left;
    for (t, color) in titles {
        draw_text(root, t, tx, y0 + 14, *color)?;
        tx += text_width(t) + CHAR_W;
    }
    let points: Vec<(f64, f64)> = series.iter().flat_map(|(p, _, _)| p.iter().copied()).collect();
    let plot = area.margin(m_top, m_bottom, m_left, m_right);
    let (px0, py0) = (x0 + m_left, y0 + m_top);
    let (px1, py1) = (x0 + aw - m_right - 1, y0 + ah - m_bottom - 1);
    if points.is_empty() {
        frame(root, (px0, py0), (px1, py1))?;
        let msg = "NO DATA";
        draw_text(root, msg, (px0 + px1 - text_width(msg)) / 2, (py0 + py1 - CHAR_H) / 2, AXIS)?;
        return Ok(());
    }
    let (xr, yr) = ranges(&points, per_epoch, clamp_y);
    let mut chart = ChartBuilder::on(&plot).build_cartesian_2d(xr.0..xr.1, yr.0..yr.1)?;
    // Steps and epochs are whole numbers.
    let xt = nice_ticks(xr.0, xr.1, 6, true);
    let yt = nice_ticks(yr.0, yr.1, 5, false);
    for &t in &xt {
        chart.draw_series(std::iter::once(PathElement::new(vec![(t, yr.0), (t, yr.1)], GRID)))?;
    }
    for &t in &yt {
        chart.draw_series(std::iter::once(PathElement::new(vec![(xr.0, t), (xr.1, t)], GRID)))?;
    }
    for (pts, color, markers) in series {
        chart.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?;
        if *markers {
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
    }
    frame(root, (px0, py0), (px1, py1))?;
    // Tick values.
    let xd = decimals(&xt);
    for &t in &xt {
        let (x, _) = chart.backend_coord(&(t, yr.0));
        let s = format!("{t:.xd$}");
        draw_text(root, &s, x - text_width(&s) / 2, py1 + 8, INK)?;
        root.draw(&PathElement::new(vec![(x, py1), (x, py1 + 4)], AXIS))?;
    }
    let yd = decimals(&yt);
    for &t in &yt {
        let (_, y) = chart.backend_coord(&(xr.0, t));
        let s = format!("{t:.yd$}");
        draw_text(root, &s, px0 - 8 - text_width(&s), y - CHAR_H / 2, INK)?;
        root.draw(&PathElement::new(vec![(px0 - 4, y), (px0, y)], AXIS))?;
    }
    draw_text(root, x_name, (px0 + px1 - text_width(x_name)) / 2, py1 + 32, AXIS)?;
    // Values of a few points (dev metrics per epoch), above each point.
    if label_points {
        if let Some((pts, color, _)) = series.first() {
            if pts.len() <= 12 {
                for &(x, y) in pts.iter() {
                    let (bx, by) = chart.backend_coord(&(x, y));
                    let s = format!("{y:.3}");
                    let lx = (bx - text_width(&s) / 2).clamp(px0 + 2, px1 - text_width(&s) - 2);
                    let ly = if by - 12 - CHAR_H > py0 { by - 12 - CHAR_H } else { by + 12 };
                    // On a white box, so lines crossing the value do not hide it.
                    let (w, pad) = (text_width(&s), DOT);
                    root.draw(&Rectangle::new(
                        [(lx - pad, ly - pad), (lx + w + pad, ly + CHAR_H + pad)],
                        WHITE.filled(),
                    ))?;
                    draw_text(root, &s, lx, ly, *color)?;
                }
            }
        }
    }
    Ok(())
}

fn frame(root: &Area, (x0, y0): (i32, i32), (x1, y1): (i32, i32)) -> DrawResult<()> {
    root.draw(&PathElement::new(vec![(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)], AXIS))?;
    Ok(())
}

/// Axis ranges with a little room around the data; x from the first to the last point.
fn ranges(points: &[(f64, f64)], per_epoch: bool, clamp_y: Option<(f64, f64)>) -> ((f64, f64), (f64, f64)) {
    let (mut xlo, mut xhi, mut ylo, mut yhi) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        xlo = xlo.min(x);
        xhi = xhi.max(x);
        ylo = ylo.min(y);
        yhi = yhi.max(y);
    }
    if per_epoch {
        // Room for the markers at both ends.
        xlo -= 0.5;
        xhi += 0.5;
    } else if xhi - xlo < 1.0 {
        xlo -= 1.0;
        xhi += 1.0;
    }
    let span = yhi - ylo;
    let pad = if span > 0.0 { span * 0.08 } else { ylo.abs().max(1.0) * 0.05 };
    ylo -= pad;
    yhi += pad;
    if let Some((lo, hi)) = clamp_y {
        ylo = ylo.max(lo);
        yhi = yhi.min(hi);
        if yhi - ylo < 0.05 {
            let mid = (ylo + yhi) / 2.0;
            ylo = (mid - 0.025).max(lo);
            yhi = (ylo + 0.05).min(hi);
        }
    }
    ((xlo, xhi), (ylo, yhi))
}

/// Round tick values (1, 2 or 5 times a power of ten apart) inside `[lo, hi]`, about `target` of
/// them; whole numbers only when `integer`.
fn nice_ticks(lo: f64, hi: f64, target: usize, integer: bool) -> Vec<f64> {
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) {
        return vec![lo];
    }
    let raw = span / target.max(1) as f64;
    let p = 10f64.powf(raw.log10().floor());
    let mut step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|s| *s >= raw).unwrap_or(10.0 * p);
    if integer {
        step = step.max(1.0).round();
    }
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// Digits after the point that tell the ticks apart.
fn decimals(ticks: &[f64]) -> usize {
    if ticks.len() < 2 {
        return if ticks.first().is_some_and(|t| t.fract() != 0.0) { 3 } else { 0 };
    }
    let step = (ticks[1] - ticks[0]).abs();
    if step >= 1.0 {
        0
    } else {
        ((-step.log10()).ceil().max(0.0) as usize).min(8)
    }
}

fn text_width(s: &str) -> i32 {
    s.chars().count() as i32 * CHAR_W - DOT
}

/// Draws `s` with its top-left corner at pixel `(x, y)` of the root area, in the built-in 5×7 font
/// (upper case; lower case is drawn as upper case, unknown characters as `?`).
fn draw_text(root: &Area, s: &str, x: i32, y: i32, color: RGBColor) -> DrawResult<()> {
    for (k, ch) in s.chars().enumerate() {
        let rows = glyph(ch);
        let cx = x + k as i32 * CHAR_W;
        for (r, bits) in rows.iter().enumerate() {
            for c in 0..5 {
                if bits & (0x10 >> c) != 0 {
                    let (px, py) = (cx + c * DOT, y + r as i32 * DOT);
                    for dy in 0..DOT {
                        for dx in 0..DOT {
                            root.draw_pixel((px + dx, py + dy), &color)?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// 5×7 glyphs, one byte per row, bit 4 the leftmost dot.
fn glyph(ch: char) -> [u8; 7] {
    match ch.to_ascii_uppercase() {
        ' ' => [0; 7],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        '-' => [0x00, 0x00, 0x00, 0x0E, 0x00, 0x00, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04],
    }
}

/// Fails unless `bytes` start with the PNG signature (a cheap check for tests and callers).
pub fn check_png(bytes: &[u8]) -> Result<()> {
    if bytes.len() < 8 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" {
        bail!("not a PNG file");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn accuracy_and_macro_f1_by_hand() {
        // Perfect.
        assert!(close(accuracy(&[0, 1, 1], &[0, 1, 1]), 1.0));
        assert!(close(macro_f1(&[0, 1, 1], &[0, 1, 1]), 1.0));
        // y = [0,0,1,1], p = [0,1,1,1]: class 0 P=1 R=1/2 F1=2/3; class 1 P=2/3 R=1 F1=4/5.
        let (y, p) = ([0, 0, 1, 1], [0, 1, 1, 1]);
        assert!(close(accuracy(&y, &p), 0.75));
        assert!(close(macro_f1(&y, &p), (2.0 / 3.0 + 0.8) / 2.0));
        // A class never predicted: y = [0,1,2,2], p = [0,1,1,2].
        // class 0: F1 1; class 1: tp 1, fp 1, fn 0 -> 2/3; class 2: tp 1, fp 0, fn 1 -> 2/3.
        assert!(close(macro_f1(&[0, 1, 2, 2], &[0, 1, 1, 2]), (1.0 + 2.0 / 3.0 + 2.0 / 3.0) / 3.0));
        // y = [0,0,1,1], p = [0,0,0,0]: class 1 never predicted, F1 0; class 0 P=1/2 R=1 F1=2/3.
        assert!(close(macro_f1(&[0, 0, 1, 1], &[0, 0, 0, 0]), (2.0 / 3.0) / 2.0));
        // A predicted class absent from the labels counts (labels ∪ predictions):
        // y = [0,0], p = [0,2] -> class 0 P=1 R=1/2 F1=2/3, class 2 F1=0, class 1 in neither.
        assert!(close(macro_f1(&[0, 0], &[0, 2]), (2.0 / 3.0) / 2.0));
        // Ids need not start at 0 or be contiguous: only present classes are averaged.
        assert!(close(macro_f1(&[3, 3, 7], &[3, 3, 7]), 1.0));
        assert_eq!(accuracy(&[], &[]), 0.0);
        assert_eq!(macro_f1(&[], &[]), 0.0);
    }

    #[test]
    fn confusion_counts() {
        let c = Confusion::from_predictions(&[0, 0, 1, 2, 2, 2], &[0, 1, 1, 2, 0, 2], 3);
        assert_eq!(c.counts, vec![1, 1, 0, 0, 1, 0, 1, 0, 2]);
        assert_eq!(c.get(2, 0), 1);
        assert_eq!(c.total(), 6);
        let s = c.per_class();
        assert_eq!((s[0].support, s[0].predicted), (2, 2));
        assert!(close(s[2].recall, 2.0 / 3.0));
        assert!(close(s[2].precision, 1.0));
        let mut g = Confusion::new(1);
        g.add(0, 0);
        g.add(3, 1);
        assert_eq!(g.num_classes, 4);
        assert_eq!((g.get(0, 0), g.get(3, 1)), (1, 1));
    }

    #[test]
    fn scores_line() {
        let s = Scores::new(&[0, 0, 1, 1], &[0, 1, 1, 1]);
        assert_eq!(s.to_string(), "accuracy=0.7500 macro_f1=0.7333 n=4");
    }

    #[test]
    fn argmax_and_softmax() {
        assert_eq!(argmax_rows(&[0.1, 0.9, 2.0, -1.0, f32::NAN, 0.0], 2), vec![1, 0, 1]);
        let p = softmax_rows(&[0.0, 0.0, 1000.0, 0.0], 2);
        assert_eq!(p, vec![0.5, 0.5, 1.0, 0.0]);
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_ticks(0.0, 1.0, 5, false), vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
        assert_eq!(nice_ticks(0.5, 3.5, 6, true), vec![1.0, 2.0, 3.0]);
        assert_eq!(nice_ticks(1.0, 1000.0, 5, false), vec![200.0, 400.0, 600.0, 800.0, 1000.0]);
        assert_eq!(decimals(&[0.2, 0.4]), 1);
        assert_eq!(decimals(&[0.05, 0.1]), 2);
        assert_eq!(decimals(&[200.0, 400.0]), 0);
    }

    #[test]
    fn metrics_log_writes_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("metrics.jsonl");
        let mut log = MetricsLog::create(&p).unwrap();
        log.log(&serde_json::json!({"step": 1, "loss": 0.7})).unwrap();
        log.log(&serde_json::json!({"epoch": 1, "dev_accuracy": 0.8, "dev_macro_f1": 0.79})).unwrap();
        // Readable while the log is still open.
        let text = fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 2);
        let c = TrainingCurves::from_metrics_log(&p).unwrap();
        assert_eq!(c.loss, vec![(1, 0.7)]);
        assert_eq!(c.dev_accuracy, vec![(1, 0.8)]);
        assert_eq!(c.dev_macro_f1, vec![(1, 0.79)]);
    }
}
