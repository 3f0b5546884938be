//! PNG figures (plotters, bitmap backend): total variation per layer (Figure 3), the cluster
//! maps of every channel of a layer (Figure 4), an input / ReLU response / cluster map triple
//! (Figure 2), accuracy against the number of secure comparisons with the paper's points
//! beside ours, and the secure cost of each preset for both protocol suites.
//!
//! Text is drawn with a TrueType font found at run time (`RELUSHARE_FONT`, then common system
//! locations); without one, drawing fails with a clear error. Every PNG is written to a
//! temporary file and renamed into place.

use crate::tv::TvRow;
use crate::AnalysisError;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const FONT: &str = "sans-serif";

/// A plotted quantity of the total-variation rows: name, value, colour.
type TvSeries = (&'static str, fn(&TvRow) -> f64, RGBColor);
/// A plotted quantity of the secure-cost bars.
type CostMetric = fn(&CostBar) -> f64;

static FONT_STATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();

fn font_candidates() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("RELUSHARE_FONT") {
        v.push(PathBuf::from(p));
    }
    for p in [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
        "/usr/share/fonts/noto/NotoSans-Regular.ttf",
        "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
        "/System/Library/Fonts/Supplemental/Arial.ttf",
        "/Library/Fonts/Arial.ttf",
        "C:\\Windows\\Fonts\\arial.ttf",
    ] {
        v.push(PathBuf::from(p));
    }
    // any .ttf two levels below the usual font directories
    for root in ["/usr/share/fonts", "/usr/local/share/fonts"] {
        let Ok(rd) = std::fs::read_dir(root) else {
            continue;
        };
        for d in rd.flatten() {
            let Ok(rd2) = std::fs::read_dir(d.path()) else {
                continue;
            };
            for e in rd2.flatten() {
                let p = e.path();
                if p.is_dir() {
                    if let Ok(rd3) = std::fs::read_dir(&p) {
                        v.extend(rd3.flatten().map(|e| e.path()));
                    }
                } else {
                    v.push(p);
                }
            }
        }
    }
    v.retain(|p| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("ttf") || e.eq_ignore_ascii_case("otf"))
    });
    v
}

/// Finds and registers a font for figure text (once per process).
pub fn ensure_font() -> Result<PathBuf, AnalysisError> {
    FONT_STATE
        .get_or_init(|| {
            for p in font_candidates() {
                let Ok(bytes) = std::fs::read(&p) else { continue };
                // plotters keeps a 'static reference to the font bytes
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok() {
                    let _ = plotters::style::register_font("serif", FontStyle::Normal, bytes);
                    let _ = plotters::style::register_font("monospace", FontStyle::Normal, bytes);
                    return Ok(p);
                }
            }
            Err("no TrueType font found for figure text: install one (e.g. DejaVu Sans) or set RELUSHARE_FONT=/path/to/font.ttf".to_string())
        })
        .clone()
        .map_err(AnalysisError::Invalid)
}

fn perr<E: std::fmt::Debug>(path: &Path) -> impl Fn(E) -> AnalysisError + '_ {
    move |e| AnalysisError::Plot {
        path: path.display().to_string(),
        msg: format!("{e:?}"),
    }
}

/// Renders into `path` through a temporary file renamed into place.
fn render(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<(), AnalysisError>,
) -> Result<(), AnalysisError> {
    ensure_font()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| AnalysisError::Io {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let stem = path
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("figure");
    let tmp = path.with_file_name(format!(".{stem}.tmp.png"));
    {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(perr(path))?;
        draw(&root)?;
        root.present().map_err(perr(path))?;
    }
    std::fs::rename(&tmp, path).map_err(|source| AnalysisError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// A distinct, deterministic colour for a cluster id.
pub fn cluster_color(id: u32) -> RGBColor {
    let h = (id as f64 * 0.618_033_988_75).fract();
    let mix = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    let s = 0.55 + 0.4 * ((mix & 0xff) as f64 / 255.0);
    let v = 0.65 + 0.35 * (((mix >> 8) & 0xff) as f64 / 255.0);
    hsv(h, s, v)
}

fn hsv(h: f64, s: f64, v: f64) -> RGBColor {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - f * s), v * (1.0 - (1.0 - f) * s));
    let (r, g, b) = match i as i64 % 6 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    RGBColor((r * 255.0) as u8, (g * 255.0) as u8, (b * 255.0) as u8)
}

fn draw_plane(
    area: &DrawingArea<BitMapBackend, Shift>,
    origin: (i32, i32),
    scale: i32,
    h: usize,
    w: usize,
    color: impl Fn(usize, usize) -> RGBColor,
    path: &Path,
) -> Result<(), AnalysisError> {
    for y in 0..h {
        for x in 0..w {
            let x0 = origin.0 + x as i32 * scale;
            let y0 = origin.1 + y as i32 * scale;
            area.draw(&Rectangle::new(
                [(x0, y0), (x0 + scale, y0 + scale)],
                color(y, x).filled(),
            ))
            .map_err(perr(path))?;
        }
    }
    Ok(())
}

/// Figure 3: total variation per traced layer (per activation, and relative to the mean
/// absolute activation).
pub fn tv_figure(rows: &[TvRow], title: &str, path: &Path) -> Result<(), AnalysisError> {
    if rows.is_empty() {
        return Err(AnalysisError::Invalid(
            "no total-variation rows to plot".into(),
        ));
    }
    render(path, (1100, 480), |root| {
        let root = root.titled(title, (FONT, 22)).map_err(perr(path))?;
        let panels = root.split_evenly((1, 2));
        let series: [TvSeries; 2] = [
            ("TV per activation", |r| r.tv_per_activation, BLUE),
            ("TV / mean |activation|", |r| r.tv_relative, RED),
        ];
        let n = rows.len();
        for (panel, (name, f, color)) in panels.iter().zip(series) {
            let ymax = rows.iter().map(f).fold(0.0f64, f64::max).max(1e-9) * 1.15;
            let mut chart = ChartBuilder::on(panel)
                .caption(name, (FONT, 16))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(0.5f64..n as f64 + 0.5, 0f64..ymax)
                .map_err(perr(path))?;
            let names: Vec<String> = rows.iter().map(|r| r.layer.clone()).collect();
            chart
                .configure_mesh()
                .x_labels(n + 1)
                .x_label_formatter(&|x| {
                    let i = x.round();
                    if (x - i).abs() < 1e-6 && i >= 1.0 && (i as usize) <= n {
                        format!("{} {}", i as usize, names[i as usize - 1])
                    } else {
                        String::new()
                    }
                })
                .x_desc("layer")
                .y_desc(name)
                .draw()
                .map_err(perr(path))?;
            let pts: Vec<(f64, f64)> = rows.iter().map(|r| (r.index as f64, f(r))).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(perr(path))?;
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(perr(path))?;
        }
        Ok(())
    })
}

/// Training curves: test accuracy (%) per epoch, one line per series (e.g. per preset and
/// seed); series of the same label share a colour.
pub fn curves_figure(
    series: &[(String, Vec<(usize, f64)>)],
    title: &str,
    path: &Path,
) -> Result<(), AnalysisError> {
    let pts: Vec<&(usize, f64)> = series.iter().flat_map(|(_, p)| p).collect();
    if pts.is_empty() {
        return Err(AnalysisError::Invalid("no training curves to plot".into()));
    }
    let epochs = pts.iter().map(|p| p.0).max().unwrap_or(1).max(1);
    let lo = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.08).max(0.2);
    let mut labels: Vec<&str> = Vec::new();
    for (l, _) in series {
        if !labels.contains(&l.as_str()) {
            labels.push(l);
        }
    }
    let palette = [
        BLUE,
        RED,
        GREEN,
        MAGENTA,
        CYAN,
        BLACK,
        RGBColor(230, 140, 0),
    ];
    render(path, (900, 560), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 20))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.8f64..epochs as f64 + 0.2, (lo - pad)..(hi + pad))
            .map_err(perr(path))?;
        chart
            .configure_mesh()
            .x_labels(epochs.min(20))
            .x_desc("epoch")
            .y_desc("test accuracy (%)")
            .draw()
            .map_err(perr(path))?;
        for (li, label) in labels.iter().enumerate() {
            let color = palette[li % palette.len()];
            let mut first = true;
            for (_, p) in series.iter().filter(|(l, _)| l == label) {
                let line: Vec<(f64, f64)> = p.iter().map(|&(e, a)| (e as f64, a)).collect();
                let drawn = chart
                    .draw_series(LineSeries::new(line, color.stroke_width(2)))
                    .map_err(perr(path))?;
                if first {
                    let label = label.to_string();
                    drawn.label(label).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                    first = false;
                }
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()
            .map_err(perr(path))?;
        Ok(())
    })
}

/// Figure 4: the cluster map of every channel of a layer, one tile per channel.
pub fn cluster_grid(
    ids: &[u32],
    (c, h, w): (usize, usize, usize),
    title: &str,
    path: &Path,
) -> Result<(), AnalysisError> {
    if ids.len() != c * h * w || c == 0 {
        return Err(AnalysisError::Shape(format!(
            "cluster map has {} ids, expected {c}x{h}x{w}",
            ids.len()
        )));
    }
    let cols = (c as f64).sqrt().ceil() as usize;
    let rows = c.div_ceil(cols);
    let scale = (96 / h.max(w)).max(1) as i32;
    let (tw, th) = (w as i32 * scale, h as i32 * scale);
    let (gap, top) = (6i32, 44i32);
    let width = cols as i32 * (tw + gap) + gap;
    let height = top + rows as i32 * (th + gap + 14) + gap;
    render(path, (width.max(300) as u32, height as u32), |root| {
        root.draw(&Text::new(
            title.to_string(),
            (gap, 10),
            (FONT, 20).into_font(),
        ))
        .map_err(perr(path))?;
        for ch in 0..c {
            let (r, col) = ((ch / cols) as i32, (ch % cols) as i32);
            let ox = gap + col * (tw + gap);
            let oy = top + r * (th + gap + 14);
            root.draw(&Text::new(
                format!("ch {ch}"),
                (ox, oy),
                (FONT, 11).into_font(),
            ))
            .map_err(perr(path))?;
            let plane = &ids[ch * h * w..(ch + 1) * h * w];
            draw_plane(
                root,
                (ox, oy + 13),
                scale,
                h,
                w,
                |y, x| cluster_color(plane[y * w + x]),
                path,
            )?;
        }
        Ok(())
    })
}

/// Figure 2: an input image (`[c, ih, iw]` bytes, c = 1 or 3), the ReLU response of one
/// channel for that image, and the channel's cluster map.
#[allow(clippy::too_many_arguments)]
pub fn triple_figure(
    image: &[u8],
    (ic, ih, iw): (usize, usize, usize),
    response: &[bool],
    clusters: &[u32],
    (h, w): (usize, usize),
    title: &str,
    path: &Path,
) -> Result<(), AnalysisError> {
    if image.len() != ic * ih * iw || !(ic == 1 || ic == 3) {
        return Err(AnalysisError::Shape(format!(
            "image has {} bytes, expected {ic}x{ih}x{iw} with 1 or 3 channels",
            image.len()
        )));
    }
    if response.len() != h * w || clusters.len() != h * w {
        return Err(AnalysisError::Shape(format!(
            "response/cluster planes must have {h}x{w} entries"
        )));
    }
    let scale = (240 / ih.max(iw).max(h).max(w)).max(1) as i32;
    let panel = (ih.max(h) as i32 * scale).max(iw.max(w) as i32 * scale);
    let (gap, top) = (20i32, 70i32);
    let width = 3 * panel + 4 * gap;
    let height = top + panel + gap;
    render(path, (width as u32, height as u32), |root| {
        root.draw(&Text::new(
            title.to_string(),
            (gap, 10),
            (FONT, 20).into_font(),
        ))
        .map_err(perr(path))?;
        let labels = [
            "input image",
            "ReLU response (white: kept)",
            "cluster map (training set)",
        ];
        for (i, l) in labels.iter().enumerate() {
            root.draw(&Text::new(
                l.to_string(),
                (gap + i as i32 * (panel + gap), top - 24),
                (FONT, 15).into_font(),
            ))
            .map_err(perr(path))?;
        }
        let plane = ih * iw;
        draw_plane(
            root,
            (gap, top),
            scale,
            ih,
            iw,
            |y, x| {
                let i = y * iw + x;
                if ic == 1 {
                    RGBColor(image[i], image[i], image[i])
                } else {
                    RGBColor(image[i], image[plane + i], image[2 * plane + i])
                }
            },
            path,
        )?;
        let s2 = (panel / h.max(w) as i32).max(1);
        draw_plane(
            root,
            (2 * gap + panel, top),
            s2,
            h,
            w,
            |y, x| {
                if response[y * w + x] {
                    WHITE
                } else {
                    BLACK
                }
            },
            path,
        )?;
        draw_plane(
            root,
            (3 * gap + 2 * panel, top),
            s2,
            h,
            w,
            |y, x| cluster_color(clusters[y * w + x]),
            path,
        )?;
        Ok(())
    })
}

/// One point of the accuracy / comparisons plot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParetoPoint {
    pub label: String,
    /// Secure comparisons (ReLU decisions) per image, whole network.
    pub comparisons: f64,
    /// Accuracy in percent.
    pub accuracy: f64,
}

/// Indices of the points no other point beats on both fewer comparisons and higher accuracy.
pub fn pareto_front(points: &[ParetoPoint]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..points.len()).collect();
    idx.sort_by(|&a, &b| {
        points[a]
            .comparisons
            .total_cmp(&points[b].comparisons)
            .then(points[b].accuracy.total_cmp(&points[a].accuracy))
    });
    let mut out = Vec::new();
    let mut best = f64::NEG_INFINITY;
    for i in idx {
        if points[i].accuracy > best {
            best = points[i].accuracy;
            out.push(i);
        }
    }
    out
}

/// Vertical pixel offsets of the labels of `points` (pixel positions `px`): each label goes
/// to the nearest free slot (alternating below and above its default place, 13 px steps) that
/// does not overlap a label placed before it, across all series (`placed` holds their boxes).
fn place_labels(
    points: &[ParetoPoint],
    px: &[(i32, i32)],
    base_dy: i32,
    placed: &mut Vec<(i32, i32, i32, i32)>,
) -> Vec<i32> {
    let mut out = Vec::with_capacity(points.len());
    for (p, &(x, y)) in points.iter().zip(px) {
        let w = 7 * p.label.chars().count() as i32;
        let slot = |k: i32| {
            base_dy
                + if k % 2 == 0 {
                    13 * (k / 2)
                } else {
                    -13 * (k / 2 + 1)
                }
        };
        let free = |dy: i32| {
            let (x0, y0, x1, y1) = (x + 7, y + dy, x + 7 + w, y + dy + 12);
            !placed
                .iter()
                .any(|&(a0, b0, a1, b1)| x0 < a1 && a0 < x1 && y0 < b1 && b0 < y1)
        };
        let dy = (0..40).map(slot).find(|&d| free(d)).unwrap_or(base_dy);
        placed.push((x + 7, y + dy, x + 7 + w, y + dy + 12));
        out.push(dy);
    }
    out
}

/// Accuracy against comparisons (log x): ours (blue, Pareto front joined) and the paper's
/// (red triangles).
pub fn pareto_figure(
    ours: &[ParetoPoint],
    paper: &[ParetoPoint],
    title: &str,
    path: &Path,
) -> Result<(), AnalysisError> {
    pareto_figure_x(
        ours,
        paper,
        title,
        "secure comparisons (ReLU decisions) per image, log scale",
        path,
    )
}

/// [`pareto_figure`] with another positive cost on the x axis (log scale): the points'
/// `comparisons` field holds that cost (e.g. megabytes per image), `x_desc` names it.
pub fn pareto_figure_x(
    ours: &[ParetoPoint],
    paper: &[ParetoPoint],
    title: &str,
    x_desc: &str,
    path: &Path,
) -> Result<(), AnalysisError> {
    let all: Vec<&ParetoPoint> = ours.iter().chain(paper).collect();
    if all.is_empty() {
        return Err(AnalysisError::Invalid("no points to plot".into()));
    }
    if all
        .iter()
        .any(|p| p.comparisons <= 0.0 || p.comparisons.is_nan() || !p.accuracy.is_finite())
    {
        return Err(AnalysisError::Invalid(
            "comparisons must be positive and accuracies finite for a log plot".into(),
        ));
    }
    // whole decades, so the log axis gets labelled ticks
    let lo = all
        .iter()
        .map(|p| p.comparisons)
        .fold(f64::INFINITY, f64::min);
    let hi = all.iter().map(|p| p.comparisons).fold(0.0, f64::max);
    let xmin = 10f64.powf((lo / 1.5).log10().floor());
    let xmax = 10f64.powf((hi * 1.5).log10().ceil());
    let ymin = all.iter().map(|p| p.accuracy).fold(f64::INFINITY, f64::min);
    let ymax = all
        .iter()
        .map(|p| p.accuracy)
        .fold(f64::NEG_INFINITY, f64::max);
    let pad = ((ymax - ymin) * 0.12).max(1.0);
    render(path, (1000, 650), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 22))
            .margin(16)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d((xmin..xmax).log_scale(), (ymin - pad)..(ymax + pad))
            .map_err(perr(path))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("test accuracy (%)")
            .x_label_formatter(&|x| {
                if *x >= 10.0 {
                    format!("{x:.0}")
                } else {
                    format!("{x}")
                }
            })
            .draw()
            .map_err(perr(path))?;
        let mut placed = Vec::new();
        let to_px = |pts: &[ParetoPoint]| -> Vec<(i32, i32)> {
            pts.iter()
                .map(|p| chart.backend_coord(&(p.comparisons, p.accuracy)))
                .collect()
        };
        let ours_dy = place_labels(ours, &to_px(ours), -14, &mut placed);
        let paper_dy = place_labels(paper, &to_px(paper), 4, &mut placed);
        let front: Vec<(f64, f64)> = pareto_front(ours)
            .into_iter()
            .map(|i| (ours[i].comparisons, ours[i].accuracy))
            .collect();
        if front.len() > 1 {
            chart
                .draw_series(LineSeries::new(front, BLUE.mix(0.5).stroke_width(2)))
                .map_err(perr(path))?
                .label("ours: Pareto front")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.mix(0.5)));
        }
        if !ours.is_empty() {
            chart
                .draw_series(ours.iter().zip(ours_dy.iter().copied()).map(|(p, dy)| {
                    EmptyElement::at((p.comparisons, p.accuracy))
                        + Circle::new((0, 0), 5, BLUE.filled())
                        + Text::new(
                            p.label.clone(),
                            (7, dy),
                            (FONT, 12).into_font().color(&BLUE),
                        )
                }))
                .map_err(perr(path))?
                .label("ours")
                .legend(|(x, y)| Circle::new((x + 10, y), 5, BLUE.filled()));
        }
        if !paper.is_empty() {
            chart
                .draw_series(paper.iter().zip(paper_dy.iter().copied()).map(|(p, dy)| {
                    EmptyElement::at((p.comparisons, p.accuracy))
                        + TriangleMarker::new((0, 0), 6, RED.filled())
                        + Text::new(p.label.clone(), (7, dy), (FONT, 12).into_font().color(&RED))
                }))
                .map_err(perr(path))?
                .label("paper")
                .legend(|(x, y)| TriangleMarker::new((x + 10, y), 6, RED.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()
            .map_err(perr(path))?;
        Ok(())
    })
}

/// Secure inference cost of one preset under one protocol suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostBar {
    pub preset: String,
    pub suite: String,
    pub online_mb: f64,
    pub offline_mb: f64,
    pub rounds: f64,
    pub seconds: f64,
}

/// Four panels (online MB, offline MB, rounds, seconds), one bar per preset and suite.
pub fn cost_figure(bars: &[CostBar], title: &str, path: &Path) -> Result<(), AnalysisError> {
    if bars.is_empty() {
        return Err(AnalysisError::Invalid("no secure-cost rows to plot".into()));
    }
    let mut presets: Vec<String> = Vec::new();
    let mut suites: Vec<String> = Vec::new();
    for b in bars {
        if !presets.contains(&b.preset) {
            presets.push(b.preset.clone());
        }
        if !suites.contains(&b.suite) {
            suites.push(b.suite.clone());
        }
    }
    let palette = [BLUE, RED, GREEN, MAGENTA, CYAN];
    let (np, ns) = (presets.len(), suites.len());
    render(path, (1200, 820), |root| {
        let root = root.titled(title, (FONT, 22)).map_err(perr(path))?;
        let panels = root.split_evenly((2, 2));
        let metrics: [(&str, CostMetric); 4] = [
            ("online communication (MB)", |b| b.online_mb),
            ("offline / preprocessing communication (MB)", |b| {
                b.offline_mb
            }),
            ("rounds", |b| b.rounds),
            ("time (s)", |b| b.seconds),
        ];
        for (pi, (panel, (name, f))) in panels.iter().zip(metrics).enumerate() {
            let ymax = bars.iter().map(f).fold(0.0f64, f64::max).max(1e-9) * 1.15;
            let mut chart = ChartBuilder::on(panel)
                .caption(name, (FONT, 15))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d(-0.5f64..np as f64 - 0.5, 0f64..ymax)
                .map_err(perr(path))?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .x_label_formatter(&|_| String::new())
                .draw()
                .map_err(perr(path))?;
            let width = 0.8 / ns as f64;
            for (si, suite) in suites.iter().enumerate() {
                let color = palette[si % palette.len()];
                let rects: Vec<Rectangle<(f64, f64)>> = bars
                    .iter()
                    .filter(|b| &b.suite == suite)
                    .filter_map(|b| {
                        let i = presets.iter().position(|p| p == &b.preset)? as f64;
                        let x0 = i - 0.4 + si as f64 * width;
                        Some(Rectangle::new(
                            [(x0, 0.0), (x0 + width * 0.92, f(b))],
                            color.filled(),
                        ))
                    })
                    .collect();
                let s = chart.draw_series(rects).map_err(perr(path))?;
                if pi == 0 {
                    s.label(suite.clone()).legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled())
                    });
                }
            }
            // preset names under the bars, in pixel coordinates
            for (i, p) in presets.iter().enumerate() {
                let (px, py) = chart.backend_coord(&(i as f64, 0.0));
                let (ox, oy) = panel.get_base_pixel();
                let _ = (ox, oy);
                panel
                    .draw(&Text::new(
                        p.clone(),
                        (px - ox - 4 * p.len() as i32, py - oy + 8),
                        (FONT, 13).into_font(),
                    ))
                    .map_err(perr(path))?;
            }
            if pi == 0 {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font((FONT, 13))
                    .draw()
                    .map_err(perr(path))?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(label: &str, c: f64, a: f64) -> ParetoPoint {
        ParetoPoint {
            label: label.into(),
            comparisons: c,
            accuracy: a,
        }
    }

    #[test]
    fn pareto_front_keeps_undominated() {
        let pts = vec![
            pt("a", 100.0, 80.0),
            pt("b", 10.0, 70.0),
            pt("c", 50.0, 60.0), // dominated by b
            pt("d", 1000.0, 85.0),
            pt("e", 1000.0, 84.0), // dominated by d
        ];
        assert_eq!(pareto_front(&pts), vec![1, 0, 3]);
    }

    #[test]
    fn colors_differ_for_neighbouring_ids() {
        for i in 0..300u32 {
            assert_ne!(cluster_color(i), cluster_color(i + 1));
        }
    }

    #[test]
    fn figures_render_to_png() {
        if ensure_font().is_err() {
            eprintln!("no font on this machine; skipping figure rendering test");
            return;
        }
        // RELUSHARE_FIG_DIR keeps the PNGs for a look
        let tmp = tempfile::tempdir().unwrap();
        let keep = std::env::var_os("RELUSHARE_FIG_DIR").map(PathBuf::from);
        let dir = keep.as_deref().unwrap_or(tmp.path());
        let rows: Vec<TvRow> = (1..=4)
            .map(|i| TvRow {
                index: i,
                layer: format!("act{i}"),
                c: 2,
                h: 4,
                w: 4,
                images: 3,
                tv_per_channel: i as f64,
                tv_per_activation: i as f64 * 0.1,
                mean_abs: 1.0,
                tv_relative: i as f64 * 0.2,
            })
            .collect();
        let p = dir.join("tv.png");
        tv_figure(&rows, "TV", &p).unwrap();
        let ids: Vec<u32> = (0..4 * 8 * 8).map(|i| (i % 7) as u32).collect();
        let g = dir.join("sub/grid.png");
        cluster_grid(&ids, (4, 8, 8), "grid", &g).unwrap();
        let t = dir.join("triple.png");
        let img: Vec<u8> = (0..3 * 10 * 10).map(|i| (i * 7 % 256) as u8).collect();
        let resp: Vec<bool> = (0..64).map(|i| i % 3 == 0).collect();
        triple_figure(&img, (3, 10, 10), &resp, &ids[..64], (8, 8), "triple", &t).unwrap();
        let pp = dir.join("pareto.png");
        pareto_figure(
            &[
                pt("original", 100000.0, 80.0),
                pt("uniform32", 30000.0, 75.0),
            ],
            &[pt("original", 100000.0, 83.59)],
            "pareto",
            &pp,
        )
        .unwrap();
        let c = dir.join("cost.png");
        let bar = |p: &str, s: &str, v: f64| CostBar {
            preset: p.into(),
            suite: s.into(),
            online_mb: v,
            offline_mb: v / 2.0,
            rounds: 10.0,
            seconds: v / 10.0,
        };
        cost_figure(
            &[
                bar("original", "securenn", 100.0),
                bar("original", "fast", 20.0),
                bar("uniform32", "securenn", 40.0),
            ],
            "cost",
            &c,
        )
        .unwrap();
        for f in [&p, &g, &t, &pp, &c] {
            let bytes = std::fs::read(f).unwrap();
            assert_eq!(&bytes[1..4], b"PNG", "{}", f.display());
            assert!(bytes.len() > 1000);
        }
        // bad input is an error, not a panic
        assert!(cluster_grid(&ids, (5, 8, 8), "x", &g).is_err());
        assert!(pareto_figure(&[pt("z", 0.0, 1.0)], &[], "x", &pp).is_err());
    }
}
