//! The heat map `peft fuse` draws of fusion attention (rows: layers or tasks, columns: adapters).

use super::font::{draw_text, text_width, CHAR_H, CHAR_W};
use super::plot::{encode_png, frame, Area, DrawResult, INK, LOSS_SMOOTH};
use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use std::path::Path;

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
