//! Turning any picture of a digit into what an MNIST image looks like: 28x28, white digit on
//! black, the digit scaled to fit a 20x20 box and centred by its centre of mass.
//!
//! Images come as bytes (PNG or JPEG) from anywhere, a file or a stranger's upload, so they are
//! decoded within limits checked before any pixel is: [`Limits`] bounds the width, the height
//! and the memory the decoder may take.

use image::imageops::{self, FilterType};
use image::{GrayImage, ImageDecoder, ImageReader, Luma};

/// MNIST's side, in pixels.
pub const SIDE: usize = 28;
/// The box MNIST fits each digit into before centring it.
const BOX: u32 = 20;
/// Ink below this (0..1) counts as background when finding the digit's extent.
const INK: f32 = 0.1;

/// How large an image [`from_image_bytes`] agrees to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The widest and tallest image accepted, in pixels.
    pub max_side: u32,
    /// The most memory the decoder may allocate, in bytes.
    pub max_bytes: u64,
}

impl Default for Limits {
    /// 4096 pixels a side (a photo of a digit needs far less) and 64 MiB.
    fn default() -> Self {
        Self { max_side: 4096, max_bytes: 64 << 20 }
    }
}

/// Why an image gives no digit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The bytes are not a PNG or JPEG image, or are damaged.
    #[error("not a readable image: {reason}")]
    Unreadable {
        /// What the decoder found.
        reason: String,
    },
    /// The image is larger than the limits allow.
    #[error("the image is {width}x{height} pixels, more than the {max}x{max} accepted")]
    TooLarge {
        /// Its width.
        width: u32,
        /// Its height.
        height: u32,
        /// The largest side accepted.
        max: u32,
    },
    /// Decoding would take more memory than the limits allow.
    #[error("the image needs more than {max_bytes} bytes to decode")]
    TooMuchMemory {
        /// The limit.
        max_bytes: u64,
    },
    /// There is no ink: the image is one flat shade.
    #[error("no digit found: the image is blank")]
    Blank,
}

/// Decodes a PNG or JPEG image and returns its 784 pixels in `[0, 1]`, MNIST-style, row-major.
///
/// ```
/// use data::digit::{Limits, from_image_bytes};
/// // A dark vertical stroke on white, 40x60, as a photo or a drawing gives it.
/// let img = image::GrayImage::from_fn(40, 60, |x, _| image::Luma([if (18..22).contains(&x) { 0 } else { 255 }]));
/// let mut png = Vec::new();
/// img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
/// let pixels = from_image_bytes(&png, Limits::default()).unwrap();
/// assert_eq!(pixels.len(), 784);
/// // White ink on black, centred: the middle column is lit, the corners are not.
/// assert!(pixels[14 * 28 + 14] > 0.5 && pixels[0] == 0.0);
/// ```
///
/// # Errors
/// The bytes are not a readable image, it exceeds `limits`, or it holds no visible digit.
pub fn from_image_bytes(bytes: &[u8], limits: Limits) -> Result<Vec<f32>, ImageError> {
    let unreadable = |e: &dyn std::fmt::Display| ImageError::Unreadable { reason: e.to_string() };
    // The memory limit holds for the header too (reading it can inflate chunks before the
    // pixels, such as a colour profile); the sides are checked below, to name them.
    let mut header_limits = image::Limits::default();
    header_limits.max_alloc = Some(limits.max_bytes);
    let mut decoder_limits = header_limits.clone();
    decoder_limits.max_image_width = Some(limits.max_side);
    decoder_limits.max_image_height = Some(limits.max_side);
    let reader = |within: &image::Limits| {
        let mut reader =
            ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| unreadable(&e))?;
        reader.limits(within.clone());
        Ok::<_, ImageError>(reader)
    };
    let too_much = |e: image::ImageError| match e {
        image::ImageError::Limits(_) => ImageError::TooMuchMemory { max_bytes: limits.max_bytes },
        other => unreadable(&other),
    };
    // The header first: an image beyond the limits is refused before any pixel is decoded.
    let (width, height) = reader(&header_limits)?.into_dimensions().map_err(too_much)?;
    if width > limits.max_side || height > limits.max_side {
        return Err(ImageError::TooLarge { width, height, max: limits.max_side });
    }
    // The decoded image alone takes up to 4 bytes a pixel (grey and alpha, 16-bit).
    if u64::from(width) * u64::from(height) * 4 > limits.max_bytes {
        return Err(ImageError::TooMuchMemory { max_bytes: limits.max_bytes });
    }
    let mut decoder = reader(&decoder_limits)?.into_decoder().map_err(too_much)?;
    // A photo is stored as the sensor saw it, with the way up in its Exif data: turned upright
    // here, as a viewer shows it. Unreadable Exif data leaves the image as stored.
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(too_much)?;
    img.apply_orientation(orientation);
    // Transparent pixels are composited over white, as a viewer would show them.
    let la = img.to_luma_alpha8();
    let gray = GrayImage::from_fn(la.width(), la.height(), |x, y| {
        let [l, a] = la.get_pixel(x, y).0;
        let (l, a) = (f32::from(l), f32::from(a) / 255.0);
        Luma([(l * a + 255.0 * (1.0 - a)).round() as u8])
    });
    to_mnist(&gray).ok_or(ImageError::Blank)
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

    fn png(img: &GrayImage) -> Vec<u8> {
        let mut bytes = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
        bytes
    }

    #[test]
    fn encoded_images_decode_within_limits() {
        let bytes = png(&dark_bar_on_white());
        assert_eq!(from_image_bytes(&bytes, Limits::default()).unwrap(), to_mnist(&dark_bar_on_white()).unwrap());
        let small = Limits { max_side: 64, max_bytes: 1 << 20 };
        assert_eq!(
            from_image_bytes(&bytes, small).unwrap_err().to_string(),
            "the image is 80x100 pixels, more than the 64x64 accepted"
        );
        let tight = Limits { max_side: 4096, max_bytes: 1000 };
        assert_eq!(from_image_bytes(&bytes, tight).unwrap_err(), ImageError::TooMuchMemory { max_bytes: 1000 });
        let err = from_image_bytes(b"hello", Limits::default()).unwrap_err();
        assert!(matches!(err, ImageError::Unreadable { .. }), "{err}");
        let blank = png(&GrayImage::from_pixel(40, 40, Luma([255])));
        assert_eq!(from_image_bytes(&blank, Limits::default()).unwrap_err(), ImageError::Blank);
    }

    #[test]
    fn images_are_turned_upright_by_their_exif_orientation() {
        // An "L" stored lying on its back with Exif orientation 6 ("rotate 90° clockwise to
        // view"): a viewer shows it upright, and so must the digit. The foot tells a quarter
        // turn from three quarters.
        let bar = GrayImage::from_fn(80, 100, |x, y| {
            let stem = (36..44).contains(&x) && (20..80).contains(&y);
            let foot = (36..62).contains(&x) && (72..80).contains(&y);
            Luma([if stem || foot { 0 } else { 255 }])
        });
        let stored = image::imageops::rotate270(&bar);
        let mut bytes = png(&stored);
        // eXIf: a big-endian TIFF header and one entry, tag 0x0112 (orientation), SHORT, 6.
        let exif: &[u8] = b"MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0\x06\0\0\0\0\0\0";
        let mut crc = flate2::Crc::new();
        crc.update(b"eXIf");
        crc.update(exif);
        let mut chunk = (exif.len() as u32).to_be_bytes().to_vec();
        chunk.extend_from_slice(b"eXIf");
        chunk.extend_from_slice(exif);
        chunk.extend_from_slice(&crc.sum().to_be_bytes());
        bytes.splice(33..33, chunk); // after the signature and IHDR
        let upright = from_image_bytes(&png(&bar), Limits::default()).unwrap();
        assert_eq!(from_image_bytes(&bytes, Limits::default()).unwrap(), upright);
        assert_ne!(
            from_image_bytes(&png(&stored), Limits::default()).unwrap(),
            upright,
            "the test must turn something"
        );
        let half_turn = image::imageops::rotate180(&bar);
        assert_ne!(from_image_bytes(&png(&half_turn), Limits::default()).unwrap(), upright, "and tell the ways apart");
    }

    #[test]
    fn a_huge_image_is_refused_from_its_header() {
        // A PNG whose header claims 100000x100000 pixels (its checksum mended), with the data
        // of one pixel: decoding it would take 10 GB.
        let mut bytes = png(&GrayImage::from_pixel(1, 1, Luma([0])));
        bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(&bytes[12..29]); // the IHDR chunk's type and data
        bytes[29..33].copy_from_slice(&crc.sum().to_be_bytes());
        let err = from_image_bytes(&bytes, Limits::default()).unwrap_err();
        assert_eq!(err, ImageError::TooLarge { width: 100_000, height: 100_000, max: 4096 });
    }

    #[test]
    fn a_blank_image_has_no_digit() {
        assert_eq!(to_mnist(&GrayImage::from_pixel(50, 40, Luma([255]))), None);
        assert_eq!(to_mnist(&GrayImage::from_pixel(28, 28, Luma([0]))), None);
    }
}
