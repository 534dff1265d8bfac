//! PNG charts of a run's curves, drawn by `plotters`: one chart per quantity, stacked, each
//! with its title, axes with ticks, grid and units, and a legend when it shows several series.
//! Text is DejaVu Sans (shipped in `assets/fonts`, so nothing depends on the system's fonts).
//! `swav-train` writes `training.png` (loss per iteration with its per-epoch mean, learning
//! rate, images/s); `swav-lincls train` writes `curves.png` (loss, top-1 and top-5 per epoch).
//! Written atomically.

use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The font every label is drawn with.
const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
/// The family name the font is registered under.
const FAMILY: &str = "sans-serif";
/// Width of the image and height of one chart, in pixels.
const WIDTH: u32 = 900;
const CHART_HEIGHT: u32 = 300;
/// Series colours (matplotlib's first four).
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Its legend entry.
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Drawn thick with dots at its points (a summary over a noisier series).
    pub emphasis: bool,
}

impl Series {
    /// A plain line.
    pub fn line(name: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            points,
            emphasis: false,
        }
    }
}

/// One chart: a quantity against iterations or epochs.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

/// Why a chart could not be drawn or written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("the built-in font does not parse")]
    Font,
    /// plotters failed to draw (its error, as text: it borrows the backend).
    #[error("drawing {chart}: {message}")]
    Draw { chart: String, message: String },
    #[error("encoding the PNG: {0}")]
    Encode(#[from] png::EncodingError),
    /// The metrics could not be read or the image written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn register_font() -> Result<(), PlotError> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = DONE
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if *ok {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

/// The range a chart's axis shows: the data's, widened a little (and made non-empty).
fn range(values: impl Iterator<Item = f64>, pad: f64) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let span = hi - lo;
    let margin = if span > 0.0 {
        span * pad
    } else {
        lo.abs().max(1.0) * 0.05
    };
    (lo - margin)..(hi + margin)
}

/// A tick label: short, whatever the scale (`0.25`, `1500`, `40k`, `1.2M`, `2.5e-5`).
fn tick(v: &f64) -> String {
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e9).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 1e6 {
        format!("{}M", trim(format!("{:.2}", v / 1e6)))
    } else if a >= 1e4 {
        format!("{}k", trim(format!("{:.1}", v / 1e3)))
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        trim(format!("{v:.4}"))
    }
}

/// Where a chart's legend goes: the upper right unless the curves end high (rising accuracy),
/// then the lower right, so that it covers no line's end.
fn legend_position(points: &[(f64, f64)], ys: &std::ops::Range<f64>) -> SeriesLabelPosition {
    let xs = range(points.iter().map(|p| p.0), 0.0);
    let right = xs.start + (xs.end - xs.start) * 0.6;
    let mid = (ys.start + ys.end) / 2.0;
    let late: Vec<f64> = points
        .iter()
        .filter(|p| p.0 >= right)
        .map(|p| p.1)
        .collect();
    let high = !late.is_empty() && late.iter().sum::<f64>() / late.len() as f64 > mid;
    if high {
        SeriesLabelPosition::LowerRight
    } else {
        SeriesLabelPosition::UpperRight
    }
}

/// Render charts stacked vertically as PNG bytes.
pub fn render(charts: &[Chart]) -> Result<Vec<u8>, PlotError> {
    register_font()?;
    let height = CHART_HEIGHT * charts.len().max(1) as u32;
    let mut rgb = vec![255u8; (WIDTH * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, height)).into_drawing_area();
        let areas = root.split_evenly((charts.len().max(1), 1));
        for (chart, area) in charts.iter().zip(&areas) {
            draw(chart, area).map_err(|e| PlotError::Draw {
                chart: chart.title.clone(),
                message: e.to_string(),
            })?;
        }
        root.present().map_err(|e| PlotError::Draw {
            chart: "the image".into(),
            message: e.to_string(),
        })?;
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, WIDTH, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header()?;
        w.write_image_data(&rgb)?;
    }
    Ok(out)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw(chart: &Chart, area: &Area) -> Result<(), Box<dyn std::error::Error>> {
    let finite = |s: &Series| -> Vec<(f64, f64)> {
        s.points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect()
    };
    let series: Vec<(&Series, Vec<(f64, f64)>)> =
        chart.series.iter().map(|s| (s, finite(s))).collect();
    let all = || series.iter().flat_map(|(_, p)| p.iter().copied());
    let empty = all().next().is_none();
    let title = if empty {
        format!("{} (no data yet)", chart.title)
    } else {
        chart.title.clone()
    };
    let xs = range(all().map(|p| p.0), 0.0);
    let ys = range(all().map(|p| p.1), 0.05);
    let legend = legend_position(&all().collect::<Vec<_>>(), &ys);
    let mut c = ChartBuilder::on(area)
        .caption(title, (FAMILY, 18))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(72)
        .build_cartesian_2d(xs, ys)?;
    c.configure_mesh()
        .x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .x_labels(10)
        .y_labels(6)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(220, 220, 220))
        .draw()?;
    for (i, (s, points)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let width = if s.emphasis { 3 } else { 1 };
        let style = colour.stroke_width(width);
        let drawn = c.draw_series(LineSeries::new(points.iter().copied(), style))?;
        if series.len() > 1 {
            drawn.label(s.name.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(width))
            });
        }
        if s.emphasis || points.len() == 1 {
            c.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
        }
    }
    if series.len() > 1 && !empty {
        c.configure_series_labels()
            .label_font((FAMILY, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .position(legend)
            .draw()?;
    }
    Ok(())
}

/// Write charts to `path` as a PNG, atomically.
pub fn write_png(path: &Path, charts: &[Chart]) -> Result<(), PlotError> {
    let bytes = render(charts)?;
    crate::atomic::write_bytes(path, &bytes).map_err(|source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A training's curves, from its `metrics.jsonl` (iteration and epoch events): loss per
/// iteration with each epoch's mean (at the epoch's last iteration), learning rate, images/s.
pub fn training_charts(metrics: &str) -> Vec<Chart> {
    let (mut loss, mut lr, mut speed, mut epochs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut last_iteration = std::collections::BTreeMap::new();
    for line in metrics.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        match v["event"].as_str() {
            Some("iteration") => {
                let it = v["iteration"].as_f64().unwrap_or(0.0);
                if let Some(e) = v["epoch"].as_u64() {
                    last_iteration.insert(e, it);
                }
                let push = |key: &str, to: &mut Vec<(f64, f64)>| {
                    if let Some(y) = v[key].as_f64() {
                        to.push((it, y));
                    }
                };
                push("loss", &mut loss);
                push("lr", &mut lr);
                push("images_per_second", &mut speed);
            }
            Some("epoch") => {
                if let (Some(e), Some(l)) = (v["epoch"].as_u64(), v["loss"].as_f64()) {
                    epochs.push((e, l));
                }
            }
            _ => {}
        }
    }
    let means = epochs
        .into_iter()
        .filter_map(|(e, l)| last_iteration.get(&e).map(|&it| (it, l)))
        .collect();
    vec![
        Chart {
            title: "SwAV loss".into(),
            x_label: "iteration".into(),
            y_label: "loss".into(),
            series: vec![
                Series::line("per iteration", loss),
                Series {
                    name: "epoch mean".into(),
                    points: means,
                    emphasis: true,
                },
            ],
        },
        Chart {
            title: "Learning rate (LARS)".into(),
            x_label: "iteration".into(),
            y_label: "learning rate".into(),
            series: vec![Series::line("lr", lr)],
        },
        Chart {
            title: "Training speed".into(),
            x_label: "iteration".into(),
            y_label: "images / s".into(),
            series: vec![Series::line("images/s", speed)],
        },
    ]
}

/// `OUTPUT/training.png` from `OUTPUT/metrics.jsonl`. Works on a running job (it reads what
/// is written so far).
pub fn write_training_plot(output: &Path) -> Result<PathBuf, PlotError> {
    let metrics = output.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics).map_err(|source| PlotError::Io {
        path: metrics.clone(),
        source,
    })?;
    let path = output.join("training.png");
    write_png(&path, &training_charts(&text))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let mut dec = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; dec.output_buffer_size().unwrap()];
        let info = dec.next_frame(&mut buf).unwrap();
        (info.width, info.height, buf)
    }

    #[test]
    fn training_charts_draw_every_curve_with_text() {
        let mut metrics = String::new();
        for it in 0..40 {
            let epoch = it / 10;
            metrics.push_str(&format!(
                "{{\"event\":\"iteration\",\"epoch\":{epoch},\"iteration\":{it},\"loss\":{},\"lr\":{},\"images_per_second\":{}}}\n",
                8.0 - it as f64 * 0.1,
                0.01 * it as f64,
                250.0 + it as f64
            ));
            if it % 10 == 9 {
                metrics.push_str(&format!(
                    "{{\"event\":\"epoch\",\"epoch\":{epoch},\"loss\":{}}}\n",
                    7.5 - epoch as f64
                ));
            }
        }
        metrics.push_str("not json\n");
        let charts = training_charts(&metrics);
        assert_eq!(charts.len(), 3);
        assert_eq!(charts[0].series[0].points.len(), 40);
        // Each epoch's mean sits at its last iteration.
        assert_eq!(
            charts[0].series[1].points,
            vec![(9.0, 7.5), (19.0, 6.5), (29.0, 5.5), (39.0, 4.5)]
        );
        assert_eq!(charts[2].series[0].points[3], (3.0, 253.0));
        let (w, h, px) = decode(&render(&charts).unwrap());
        assert_eq!((w, h), (WIDTH, 3 * CHART_HEIGHT));
        // The curves are drawn in their colours (blue lines in the three charts, the orange
        // epoch means), and text (dark pixels) is there.
        let count = |f: fn(i32, i32, i32) -> bool| {
            px.chunks(3)
                .filter(|p| f(p[0] as i32, p[1] as i32, p[2] as i32))
                .count()
        };
        let blue = count(|r, _, b| b - r > 60);
        let orange = count(|r, g, b| r > 200 && r - b > 120 && g > 80);
        assert!(blue > 1500, "{blue} blue pixels");
        assert!(orange > 1000, "{orange} orange pixels");
        let dark = px.chunks(3).filter(|p| p.iter().all(|&v| v < 60)).count();
        assert!(dark > 2000, "{dark} dark pixels");
    }

    #[test]
    fn empty_and_odd_series_still_render() {
        let charts = [
            Chart {
                title: "nothing".into(),
                x_label: "x".into(),
                y_label: "y".into(),
                series: vec![Series::line("a", vec![])],
            },
            Chart {
                title: "one point and a NaN".into(),
                x_label: "x".into(),
                y_label: "y".into(),
                series: vec![Series::line("a", vec![(1.0, 2.0), (2.0, f64::NAN)])],
            },
        ];
        let (w, h, _) = decode(&render(&charts).unwrap());
        assert_eq!((w, h), (WIDTH, 2 * CHART_HEIGHT));
    }

    #[test]
    fn the_legend_keeps_off_the_curves_ends() {
        let rising: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, i as f64)).collect();
        let falling: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 9.0 - i as f64)).collect();
        let ys = range(rising.iter().map(|p| p.1), 0.05);
        assert!(matches!(
            legend_position(&rising, &ys),
            SeriesLabelPosition::LowerRight
        ));
        assert!(matches!(
            legend_position(&falling, &ys),
            SeriesLabelPosition::UpperRight
        ));
    }

    #[test]
    fn tick_labels_stay_short() {
        assert_eq!(tick(&0.0), "0");
        assert_eq!(tick(&0.25), "0.25");
        assert_eq!(tick(&4.0), "4");
        assert_eq!(tick(&1500.0), "1500");
        assert_eq!(tick(&40_000.0), "40k");
        assert_eq!(tick(&1_200_000.0), "1.2M");
        assert_eq!(tick(&2.5e-5), "2.5e-5");
    }
}
