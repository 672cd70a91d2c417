//! The training plot: loss per step (raw and smoothed) beside dev accuracy (and macro-F1) per
//! epoch, drawn with `plotters` and labelled in the built-in pixel font.

use super::font::{draw_text, text_width, CHAR_H, CHAR_W, DOT};
use super::TrainingCurves;
use anyhow::{bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

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
pub(super) fn encode_png(rgb: &[u8], w: u32, h: u32) -> Result<Vec<u8>> {
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

pub(super) type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
pub(super) type DrawResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;
/// A line to draw: its points, its color, and whether each point gets a dot.
type Series<'a> = (&'a [(f64, f64)], RGBColor, bool);

const LOSS_RAW: RGBColor = RGBColor(160, 190, 230);
pub(super) const LOSS_SMOOTH: RGBColor = RGBColor(20, 70, 160);
const ACC: RGBColor = RGBColor(215, 95, 20);
const F1: RGBColor = RGBColor(40, 140, 60);
const GRID: RGBColor = RGBColor(228, 228, 228);
const AXIS: RGBColor = RGBColor(90, 90, 90);
pub(super) const INK: RGBColor = RGBColor(40, 40, 40);

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

pub(super) fn frame(root: &Area, (x0, y0): (i32, i32), (x1, y1): (i32, i32)) -> DrawResult<()> {
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

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_ticks(0.0, 1.0, 5, false), vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
        assert_eq!(nice_ticks(0.5, 3.5, 6, true), vec![1.0, 2.0, 3.0]);
        assert_eq!(nice_ticks(1.0, 1000.0, 5, false), vec![200.0, 400.0, 600.0, 800.0, 1000.0]);
        assert_eq!(decimals(&[0.2, 0.4]), 1);
        assert_eq!(decimals(&[0.05, 0.1]), 2);
        assert_eq!(decimals(&[200.0, 400.0]), 0);
    }
}
