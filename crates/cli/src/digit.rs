//! Turning any picture of a digit into what an MNIST image looks like: 28x28, white digit on
//! black, the digit scaled to fit a 20x20 box and centred by its centre of mass.

use std::path::Path;

use anyhow::{Context, Result, bail};
use image::imageops::{self, FilterType};
use image::{GrayImage, Luma};

/// MNIST's side, in pixels.
pub const SIDE: usize = 28;
/// The box MNIST fits each digit into before centring it.
const BOX: u32 = 20;
/// Ink below this (0..1) counts as background when finding the digit's extent.
const INK: f32 = 0.1;

/// Reads an image file and returns its 784 pixels in `[0, 1]`, MNIST-style, row-major.
///
/// # Errors
/// The file cannot be read or decoded, or holds no visible digit.
pub fn load(path: &Path) -> Result<Vec<f32>> {
    let img = image::ImageReader::open(path)
        .with_context(|| format!("{}: cannot open", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("{}: cannot read", path.display()))?
        .decode()
        .with_context(|| format!("{}: not a readable image", path.display()))?;
    // Transparent pixels are composited over white, as a viewer would show them.
    let la = img.to_luma_alpha8();
    let gray = GrayImage::from_fn(la.width(), la.height(), |x, y| {
        let [l, a] = la.get_pixel(x, y).0;
        let (l, a) = (f32::from(l), f32::from(a) / 255.0);
        Luma([(l * a + 255.0 * (1.0 - a)).round() as u8])
    });
    to_mnist(&gray).with_context(|| format!("{}: no digit found: the image is blank", path.display()))
}

/// MNIST-style pixels from a grayscale image; `None` when there is no ink.
pub fn to_mnist(gray: &GrayImage) -> Option<Vec<f32>> {
    let ink = ink_map(gray);
    let (w, h) = gray.dimensions();
    if (w as usize, h as usize) == (SIDE, SIDE) {
        // Already MNIST's size: only the polarity and background are normalised.
        return ink.pixels().any(|p| p.0[0] > 0).then(|| ink.pixels().map(|p| f32::from(p.0[0]) / 255.0).collect());
    }
    let threshold = (INK * 255.0) as u8;
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, p) in ink.enumerate_pixels() {
        if p.0[0] > threshold {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
    }
    if x0 == u32::MAX {
        return None;
    }
    let (cw, ch) = (x1 - x0 + 1, y1 - y0 + 1);
    let crop = imageops::crop_imm(&ink, x0, y0, cw, ch).to_image();
    let scale = BOX as f32 / cw.max(ch) as f32;
    let (nw, nh) = (((cw as f32 * scale).round() as u32).max(1), ((ch as f32 * scale).round() as u32).max(1));
    let digit = imageops::resize(&crop, nw, nh, FilterType::Triangle);

    // Centre of mass of the scaled digit, then placed so that it lands at the image centre.
    let (mut mass, mut mx, mut my) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y, p) in digit.enumerate_pixels() {
        let v = f64::from(p.0[0]);
        mass += v;
        mx += v * f64::from(x);
        my += v * f64::from(y);
    }
    if mass == 0.0 {
        return None;
    }
    let half = SIDE as f64 / 2.0;
    let place = |com: f64, size: u32| ((half - 0.5 - com).round() as i64).clamp(0, (SIDE as u32 - size) as i64);
    let (ox, oy) = (place(mx / mass, nw), place(my / mass, nh));
    let mut out = vec![0.0f32; SIDE * SIDE];
    for (x, y, p) in digit.enumerate_pixels() {
        out[(oy as usize + y as usize) * SIDE + ox as usize + x as usize] = f32::from(p.0[0]) / 255.0;
    }
    Some(out)
}

/// Ink as bright on dark: inverted when the border (the background) is light, and the
/// background level subtracted so that a grey paper reads as black.
fn ink_map(gray: &GrayImage) -> GrayImage {
    let (w, h) = gray.dimensions();
    let border: Vec<f32> = gray
        .enumerate_pixels()
        .filter(|(x, y, _)| *x == 0 || *y == 0 || *x == w - 1 || *y == h - 1)
        .map(|(_, _, p)| f32::from(p.0[0]))
        .collect();
    let background = border.iter().sum::<f32>() / border.len() as f32;
    let invert = background > 127.5;
    let bg = if invert { 255.0 - background } else { background };
    GrayImage::from_fn(w, h, |x, y| {
        let v = f32::from(gray.get_pixel(x, y).0[0]);
        let v = if invert { 255.0 - v } else { v };
        let level = if bg < 255.0 { ((v - bg) / (255.0 - bg) * 255.0).clamp(0.0, 255.0) } else { 0.0 };
        Luma([level.round() as u8])
    })
}

/// Checks that a model takes MNIST-sized images.
///
/// # Errors
/// The model's input width is not 784.
pub fn check_input_width(width: usize, model: &Path) -> Result<()> {
    if width != SIDE * SIDE {
        bail!("{}: the model takes {width} inputs, but images are converted to 28x28 = 784", model.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A black "1" on white paper: a vertical bar, 60 pixels tall, in a 100x80 image.
    fn dark_bar_on_white() -> GrayImage {
        GrayImage::from_fn(80, 100, |x, y| {
            if (36..44).contains(&x) && (20..80).contains(&y) { Luma([0]) } else { Luma([255]) }
        })
    }

    #[test]
    fn a_dark_digit_on_light_paper_becomes_a_centred_white_digit_in_a_20_pixel_box() {
        let out = to_mnist(&dark_bar_on_white()).unwrap();
        assert_eq!(out.len(), 784);
        let rows: Vec<usize> = (0..28).filter(|r| out[r * 28..(r + 1) * 28].iter().any(|&v| v > 0.5)).collect();
        let cols: Vec<usize> = (0..28).filter(|c| (0..28).any(|r| out[r * 28 + c] > 0.5)).collect();
        assert_eq!(rows.len(), 20, "the tall side fills the 20-pixel box");
        assert_eq!((rows[0], rows[19]), (4, 23), "centred vertically");
        assert!(cols.len() <= 4 && cols.iter().all(|c| (12..=15).contains(c)), "centred horizontally: {cols:?}");
        assert_eq!(out[0], 0.0, "the background is black");
    }

    #[test]
    fn the_same_digit_drawn_light_on_dark_gives_the_same_pixels() {
        let light_on_dark = GrayImage::from_fn(80, 100, |x, y| Luma([255 - dark_bar_on_white().get_pixel(x, y).0[0]]));
        assert_eq!(to_mnist(&light_on_dark), to_mnist(&dark_bar_on_white()));
    }

    #[test]
    fn a_28x28_mnist_image_passes_through_unchanged() {
        let inside = |x: u32, y: u32| (6..22).contains(&x) && (6..22).contains(&y);
        let img = GrayImage::from_fn(28, 28, |x, y| Luma([((x * 7 + y * 3) % 200) as u8 * u8::from(inside(x, y))]));
        let out = to_mnist(&img).unwrap();
        let expected: Vec<f32> = img.pixels().map(|p| f32::from(p.0[0]) / 255.0).collect();
        assert_eq!(out, expected);
    }

    #[test]
    fn a_blank_image_has_no_digit() {
        assert_eq!(to_mnist(&GrayImage::from_pixel(50, 40, Luma([255]))), None);
        assert_eq!(to_mnist(&GrayImage::from_pixel(28, 28, Luma([0]))), None);
    }
}
