//! PNG line plots of training curves (loss and learning rate per iteration, accuracy per
//! epoch): one panel per curve, stacked, each with a frame, its title and its y range written
//! in a small built-in bitmap font. Written atomically.

use std::path::{Path, PathBuf};

/// One curve.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub points: Vec<(f64, f64)>,
}

const W: usize = 640;
const H: usize = 200;
const MARGIN: usize = 48;
const BG: [u8; 3] = [255, 255, 255];
const FG: [u8; 3] = [40, 40, 40];
const LINE: [u8; 3] = [31, 119, 180];

/// 3×5 glyphs, rows top to bottom, 3 bits each (MSB left).
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        '+' => [0, 2, 7, 2, 0],
        '/' => [1, 1, 2, 4, 4],
        ':' => [0, 2, 0, 2, 0],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        'a' => [0, 7, 1, 7, 7],
        'c' => [0, 7, 4, 4, 7],
        'e' => [7, 5, 7, 4, 7],
        'h' => [4, 4, 7, 5, 5],
        'i' => [2, 0, 2, 2, 2],
        'l' => [6, 2, 2, 2, 7],
        'n' => [0, 6, 5, 5, 5],
        'o' => [0, 7, 5, 5, 7],
        'p' => [7, 5, 7, 4, 4],
        'r' => [0, 7, 4, 4, 4],
        's' => [7, 4, 7, 1, 7],
        't' => [2, 7, 2, 2, 3],
        'u' => [0, 5, 5, 5, 7],
        'v' => [0, 5, 5, 5, 2],
        'x' => [0, 5, 2, 5, 5],
        'y' => [5, 5, 7, 1, 7],
        'k' => [4, 5, 6, 5, 5],
        'g' => [7, 5, 7, 1, 7],
        'm' => [0, 7, 7, 5, 5],
        'b' => [4, 4, 7, 5, 7],
        'd' => [1, 1, 7, 5, 7],
        'f' => [3, 4, 6, 4, 4],
        'w' => [0, 5, 5, 7, 7],
        _ => [0, 0, 0, 0, 0],
    }
}

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn set(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < self.w && y < self.h {
            let i = (y * self.w + x) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn text(&mut self, x: usize, y: usize, s: &str, scale: usize) {
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch.to_ascii_lowercase());
            for (r, bits) in g.iter().enumerate() {
                for b in 0..3 {
                    if bits >> (2 - b) & 1 == 1 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                self.set(x + (i * 4 + b) * scale + dx, y + r * scale + dy, FG);
                            }
                        }
                    }
                }
            }
        }
    }

    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3]) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            if x >= 0.0 && y >= 0.0 {
                self.set(x.round() as usize, y.round() as usize, c);
            }
        }
    }
}

fn label(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-2 || v.abs() >= 1e4) {
        format!("{v:.2e}")
    } else {
        format!("{v:.4}")
    }
}

/// Render panels stacked vertically as PNG bytes.
pub fn render(panels: &[Panel]) -> Vec<u8> {
    let mut c = Canvas {
        w: W,
        h: H * panels.len().max(1),
        px: Vec::new(),
    };
    c.px = BG.repeat(c.w * c.h);
    for (p, panel) in panels.iter().enumerate() {
        let top = p * H;
        let (x0, x1) = (MARGIN as f64, (W - 16) as f64);
        let (y0, y1) = ((top + 24) as f64, (top + H - 24) as f64);
        c.line((x0, y0), (x1, y0), FG);
        c.line((x0, y1), (x1, y1), FG);
        c.line((x0, y0), (x0, y1), FG);
        c.line((x1, y0), (x1, y1), FG);
        let pts: Vec<(f64, f64)> = panel
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let (xmin, xmax) = pts
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &(x, _)| {
                (a.min(x), b.max(x))
            });
        let (ymin, ymax) = pts
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &(_, y)| {
                (a.min(y), b.max(y))
            });
        let title = if pts.is_empty() {
            format!("{} (no data)", panel.title)
        } else {
            format!(
                "{}  y {} to {}  x {} to {}",
                panel.title,
                label(ymin),
                label(ymax),
                xmin,
                xmax
            )
        };
        c.text(MARGIN, top + 8, &title, 2);
        if pts.is_empty() {
            continue;
        }
        let sx = |x: f64| x0 + (x - xmin) / (xmax - xmin).max(1e-300) * (x1 - x0);
        let sy = |y: f64| y1 - (y - ymin) / (ymax - ymin).max(1e-300) * (y1 - y0);
        c.text(4, y0 as usize, &label(ymax), 1);
        c.text(4, y1 as usize - 5, &label(ymin), 1);
        if pts.len() == 1 {
            c.set(sx(pts[0].0) as usize, sy(pts[0].1) as usize, LINE);
        }
        for w in pts.windows(2) {
            c.line((sx(w[0].0), sy(w[0].1)), (sx(w[1].0), sy(w[1].1)), LINE);
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, c.w as u32, c.h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().expect("in-memory PNG");
        w.write_image_data(&c.px).expect("in-memory PNG");
    }
    out
}

/// Write panels to `path` as a PNG, atomically.
pub fn write_png(path: &Path, panels: &[Panel]) -> Result<(), String> {
    let bytes = render(panels);
    crate::atomic::write_bytes(path, &bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Loss and learning rate per iteration, from a training's `metrics.jsonl`, into
/// `OUTPUT/training.png`. Works on a running job (it reads what is written so far).
pub fn write_training_plot(output: &Path) -> Result<PathBuf, String> {
    let metrics = output.join("metrics.jsonl");
    let text =
        std::fs::read_to_string(&metrics).map_err(|e| format!("{}: {e}", metrics.display()))?;
    let (mut loss, mut lr) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["event"] == "iteration" {
            let it = v["iteration"].as_f64().unwrap_or(0.0);
            if let Some(l) = v["loss"].as_f64() {
                loss.push((it, l));
            }
            if let Some(r) = v["lr"].as_f64() {
                lr.push((it, r));
            }
        }
    }
    let path = output.join("training.png");
    write_png(
        &path,
        &[
            Panel {
                title: "loss per iteration".into(),
                points: loss,
            },
            Panel {
                title: "lr per iteration".into(),
                points: lr,
            },
        ],
    )?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_decodable_png() {
        let bytes = render(&[Panel {
            title: "loss".into(),
            points: (0..50)
                .map(|i| (i as f64, (i as f64 * 0.1).cos()))
                .collect(),
        }]);
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (W as u32, H as u32));
        // The curve's colour is drawn.
        assert!(buf.chunks_exact(3).any(|p| p == LINE));
    }
}
