//! SVG pictures of a training run: loss and accuracy per epoch, the confusion matrix as a
//! heatmap, misclassified digits, and digits as augmentation transforms them. Each function
//! returns the SVG document as text, for the caller to write where it likes. Text is laid out
//! with an embedded font (DejaVu Sans, reduced to ASCII), so no system font library is needed.
//!
//! ```
//! let mut cm = metrics::ConfusionMatrix::new(2);
//! cm.add(0, 0);
//! cm.add(1, 0);
//! let names = ["cat".to_owned(), "dog".to_owned()];
//! let svg = plots::confusion_heatmap(&cm, &names).unwrap();
//! assert!(svg.starts_with("<svg") && svg.contains("accuracy 50.00%"));
//! ```

use std::sync::Once;

use data::Dataset;
use metrics::ConfusionMatrix;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use train::EpochRecord;

/// What drawing failed on, as the plotting library says it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("drawing failed: {0}")]
pub struct PlotError(String);

type Result<T> = std::result::Result<T, PlotError>;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
const FAMILY: &str = "sans-serif";
/// At most this many misclassified digits are drawn.
const MAX_DIGITS: usize = 64;

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is part of the binary and known to parse (a test renders every plot).
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

/// A text style of `size` pixels anchored at `pos`.
fn text_style(size: u32, pos: Pos) -> TextStyle<'static> {
    TextStyle::from((FAMILY, size).into_font()).pos(pos)
}

/// Draws an SVG document of `size` pixels with `draw`.
fn render(size: (u32, u32), draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<()>) -> Result<String> {
    register_font();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(&root)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn err(e: impl std::fmt::Display) -> PlotError {
    PlotError(e.to_string())
}

/// A named, coloured line of `(epoch, value)` points.
type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

/// Ticks on an axis of epochs up to `last`: one per epoch, at most a dozen.
fn epoch_ticks(last: f64) -> usize {
    (last.max(1.0) as usize).min(12)
}

/// A line chart of one or two named series over epochs.
fn curves(title: &str, y_label: &str, series: &[Series]) -> Result<String> {
    let points = || series.iter().flat_map(|(_, _, p)| p.iter());
    let last_epoch = points().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    let pad = ((hi - lo) * 0.1).max(1e-3);
    render((800, 500), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FAMILY, 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.5..last_epoch + 0.5, (lo - pad).max(0.0)..hi + pad)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(y_label)
            // As many ticks as whole epochs (up to a dozen), which puts them on whole epochs; a
            // tick between two, where the axis is too long for that, goes unlabelled.
            .x_labels(epoch_ticks(last_epoch))
            .x_label_formatter(&|x| if x.fract() == 0.0 { format!("{x:.0}") } else { String::new() })
            .label_style((FAMILY, 14))
            .draw()
            .map_err(err)?;
        for (label, color, pts) in series {
            let color = *color;
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(err)?
                .label(*label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(err)?;
        }
        chart
            .configure_series_labels()
            .label_font((FAMILY, 14))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        Ok(())
    })
}

/// The loss and the accuracy per epoch, as two charts: the training figures, and the
/// validation ones where the run has them.
///
/// # Errors
/// Drawing failed.
pub fn training_curves(history: &[EpochRecord]) -> Result<Curves> {
    let at = |f: fn(&EpochRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        history.iter().filter_map(|r| f(r).map(|v| (r.epoch as f64, v))).collect()
    };
    let mut loss = vec![("training (mean of batch losses)", BLUE, at(|r| Some(r.train_loss)))];
    let mut acc = vec![("training (during the epoch)", BLUE, at(|r| Some(100.0 * r.train_accuracy)))];
    if history.iter().any(|r| r.val_loss.is_some()) {
        loss.push(("validation", RED, at(|r| r.val_loss)));
        acc.push(("validation", RED, at(|r| r.val_accuracy.map(|a| 100.0 * a))));
    }
    Ok(Curves {
        loss: curves("Loss per epoch", "cross-entropy", &loss)?,
        accuracy: curves("Accuracy per epoch", "accuracy (%)", &acc)?,
    })
}

/// [`training_curves`]' two charts, as SVG documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Curves {
    /// The loss per epoch.
    pub loss: String,
    /// The accuracy per epoch, in percent.
    pub accuracy: String,
}

/// The confusion matrix as a heatmap, each row shaded by the share of its class, with the
/// counts written in.
///
/// # Errors
/// Drawing failed.
pub fn confusion_heatmap(cm: &ConfusionMatrix, class_names: &[String]) -> Result<String> {
    let k = cm.classes() as i32;
    let cell = 48;
    let name = |i: i32| class_names.get(i as usize).cloned().unwrap_or_else(|| i.to_string());
    // Rows carry whole names, so the margin grows with the longest; columns carry their
    // start, as the text table does.
    let longest = (0..k).map(|i| name(i).chars().count()).max().unwrap_or(1) as i32;
    let (left, top) = (90.max(40 + 8 * longest), 90);
    let size = ((left + k * cell + 30) as u32, (top + k * cell + 60) as u32);
    render(size, |root| {
        let title = format!("Confusion matrix: {} test images, accuracy {:.2}%", cm.total(), 100.0 * cm.accuracy());
        root.draw(&Text::new(title, (left, 16), (FAMILY, 18).into_font())).map_err(err)?;
        let centre = Pos::new(HPos::Center, VPos::Center);
        let label = |s: String, at: (i32, i32)| Text::new(s, at, text_style(14, centre));
        root.draw(&label("predicted class".into(), (left + k * cell / 2, top - 32))).map_err(err)?;
        let rotated = TextStyle::from((FAMILY, 14).into_font().transform(FontTransform::Rotate270)).pos(centre);
        root.draw(&Text::new("true class", (22, top + k * cell / 2), rotated)).map_err(err)?;
        let right = Pos::new(HPos::Right, VPos::Center);
        for i in 0..k {
            let column: String = name(i).chars().take(metrics::COLUMN_NAME_CHARS).collect();
            root.draw(&label(column, (left + i * cell + cell / 2, top - 12))).map_err(err)?;
            root.draw(&Text::new(name(i), (left - 8, top + i * cell + cell / 2), text_style(14, right)))
                .map_err(err)?;
        }
        for t in 0..k {
            let support = cm.support(t as usize).max(1) as f64;
            for p in 0..k {
                let count = cm.count(t as usize, p as usize);
                let share = count as f64 / support;
                // White to dark blue by the square root of the row's share, so that a few
                // errors still show against the diagonal.
                let share = share.sqrt();
                let shade = |full: u8| (255.0 - share * (255.0 - f64::from(full))).round() as u8;
                let colour = RGBColor(shade(8), shade(48), shade(107));
                let (x, y) = (left + p * cell, top + t * cell);
                root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], colour.filled())).map_err(err)?;
                root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], RGBColor(200, 200, 200))).map_err(err)?;
                let ink = if share > 0.5 { WHITE } else { BLACK };
                let text =
                    Text::new(count.to_string(), (x + cell / 2, y + cell / 2), text_style(13, centre).color(&ink));
                root.draw(&text).map_err(err)?;
            }
        }
        Ok(())
    })
}

/// Up to 64 digits of `data` that `predictions` (one per image, in order) got wrong, each
/// captioned `true → predicted`.
///
/// # Errors
/// Drawing failed.
pub fn misclassified(data: &Dataset, predictions: &[usize], class_names: &[String]) -> Result<String> {
    let name = |c: usize| class_names.get(c).cloned().unwrap_or_else(|| c.to_string());
    let wrong: Vec<usize> = (0..predictions.len()).filter(|&i| predictions[i] != usize::from(data.label(i))).collect();
    let shown = &wrong[..wrong.len().min(MAX_DIGITS)];
    let (cols, scale, caption) = (8, 3, 22);
    let (w, h) = (data.cols() as i32 * scale, data.rows() as i32 * scale);
    let (pad, top) = (10, 50);
    let rows = shown.len().div_ceil(cols as usize).max(1) as i32;
    let size = ((cols * (w + pad) + pad) as u32, (top + rows * (h + caption + pad)) as u32);
    render(size, |root| {
        let title = format!(
            "Misclassified test images, true → predicted: {} of {} ({} of {} images wrong)",
            shown.len(),
            wrong.len(),
            wrong.len(),
            predictions.len()
        );
        root.draw(&Text::new(title, (pad, 18), (FAMILY, 16).into_font())).map_err(err)?;
        if shown.is_empty() {
            root.draw(&Text::new(
                "none: every test digit was classified correctly",
                (pad, top),
                (FAMILY, 14).into_font(),
            ))
            .map_err(err)?;
        }
        for (n, &i) in shown.iter().enumerate() {
            let (gx, gy) = (pad + (n as i32 % cols) * (w + pad), top + (n as i32 / cols) * (h + caption + pad));
            root.draw(&Rectangle::new([(gx, gy), (gx + w, gy + h)], BLACK.filled())).map_err(err)?;
            draw_digit(root, data.image(i), data.cols(), (gx, gy), scale)?;
            let text = format!("{} → {}", name(usize::from(data.label(i))), name(predictions[i]));
            let style = text_style(15, Pos::new(HPos::Center, VPos::Top));
            root.draw(&Text::new(text, (gx + w / 2, gy + h + 3), style)).map_err(err)?;
        }
        Ok(())
    })
}

/// The first digits of `data` as they are, then as `augment` transforms them with draws from
/// `seed` (what a model trains on), a row per digit.
///
/// # Errors
/// Drawing failed.
pub fn augmented(data: &Dataset, augment: &data::Augment, seed: u64) -> Result<String> {
    const DIGITS: usize = 6;
    const VERSIONS: usize = 7;
    let (scale, pad, top) = (3, 10, 40);
    let (w, h) = (data.cols() as i32 * scale, data.rows() as i32 * scale);
    let size = ((pad + (VERSIONS as i32 + 1) * (w + pad)) as u32, (top + DIGITS as i32 * (h + pad)) as u32);
    render(size, |root| {
        let title = format!(
            "Training digits, then augmented (rotation ±{}°, shift ±{} px, scale ±{}%)",
            augment.rotate,
            augment.shift,
            100.0 * augment.scale
        );
        root.draw(&Text::new(title, (pad, 14), (FAMILY, 15).into_font())).map_err(err)?;
        for d in 0..DIGITS.min(data.len()) {
            let image = data.image(d);
            let bytes = |v: &[f32]| -> Vec<u8> { v.iter().map(|&p| (p * 255.0).round() as u8).collect() };
            let versions = augment.preview(image, data.rows(), data.cols(), seed.wrapping_add(d as u64), VERSIONS);
            let y = top + d as i32 * (h + pad);
            for (k, pixels) in std::iter::once(image.to_vec()).chain(versions.iter().map(|v| bytes(v))).enumerate() {
                let x = pad + k as i32 * (w + pad) + if k > 0 { pad } else { 0 };
                root.draw(&Rectangle::new([(x, y), (x + w, y + h)], BLACK.filled())).map_err(err)?;
                draw_digit(root, &pixels, data.cols(), (x, y), scale)?;
            }
        }
        Ok(())
    })
}

/// Draws a grayscale digit as runs of equal (16-level) shade, to keep the SVG small.
fn draw_digit(
    root: &DrawingArea<SVGBackend, Shift>,
    pixels: &[u8],
    width: usize,
    at: (i32, i32),
    scale: i32,
) -> Result<()> {
    for (r, row) in pixels.chunks_exact(width).enumerate() {
        let mut c = 0;
        while c < width {
            let level = row[c] / 16;
            let start = c;
            while c < width && row[c] / 16 == level {
                c += 1;
            }
            if level == 0 {
                continue;
            }
            let g = level * 17;
            let (x, y) = (at.0 + start as i32 * scale, at.1 + r as i32 * scale);
            let rect =
                Rectangle::new([(x, y), (x + (c - start) as i32 * scale, y + scale)], RGBColor(g, g, g).filled());
            root.draw(&rect).map_err(err)?;
        }
    }
    Ok(())
}
