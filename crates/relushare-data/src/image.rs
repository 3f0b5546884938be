//! Image files as model inputs: PNG, JPEG and PPM/PGM (binary or ASCII PNM), decoded with the
//! `image` crate, converted to the model's channels and resized to its input.
//!
//! - **Channels.** A 1-channel model gets luma (`0.2126 R + 0.7152 G + 0.0722 B`, the `image`
//!   crate's conversion, ITU-R BT.709); a 3-channel model gets RGB (a grey image is replicated
//!   into the three channels). Alpha is dropped. Other channel counts are refused.
//! - **Size.** [`Fit::Stretch`] (the default) resizes the whole image to the model's `h x w`
//!   (the aspect ratio changes if it differs); [`Fit::CenterCrop`] first cuts the largest
//!   centred region with the model's aspect ratio, then resizes it. Resizing uses the triangle
//!   (bilinear) filter, `image::imageops::FilterType::Triangle`, which averages over the
//!   source pixels a destination pixel covers when downscaling; an image already of the right
//!   size is taken pixel for pixel.
//! - **Output.** `u8` pixels in planar CHW order, exactly like the dataset loaders' images, so
//!   they are normalised the same way as the training data: with the model's stored
//!   normalisation (`(p / 255 - mean_c) / std_c`, `relushare_model::Normalization::apply`).
//!
//! Files are hostile input: the decoder runs with size limits (at most [`MAX_SIDE`] pixels per
//! side and [`MAX_DECODE_BYTES`] of decoded data), and an unreadable, truncated or corrupt file
//! fails with a [`DataError`] that names it. Nothing panics.

use crate::{DataError, DatasetName, FormatProblem};
use ::image::imageops::FilterType;
use ::image::{DynamicImage, ImageReader, Limits};
use std::path::{Path, PathBuf};

/// Largest accepted width or height of an image file.
pub const MAX_SIDE: u32 = 16_384;
/// Largest decoded image (bytes) the decoder may allocate.
pub const MAX_DECODE_BYTES: u64 = 512 << 20;

/// How an image is brought to the model's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fit {
    /// Resize the whole image to the input size.
    #[default]
    Stretch,
    /// Cut the largest centred region with the input's aspect ratio, then resize.
    CenterCrop,
}

fn format_err(path: &Path, problem: FormatProblem, detail: impl ToString) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        problem,
        detail: detail.to_string(),
    }
}

/// Largest accepted image file.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// Decodes the image file `path` into `c x h x w` `u8` pixels (planar CHW) for a model with
/// that input (see the module docs for the conversion).
pub fn load_image(
    path: &Path,
    dims: (usize, usize, usize),
    fit: Fit,
) -> Result<Vec<u8>, DataError> {
    Decoded::open(path)?.to_input(dims, fit)
}

/// Decodes several image files (see [`load_image`]).
pub fn load_images(
    paths: &[PathBuf],
    dims: (usize, usize, usize),
    fit: Fit,
) -> Result<Vec<Vec<u8>>, DataError> {
    paths.iter().map(|p| load_image(p, dims, fit)).collect()
}

/// A decoded image file, to be brought to a model's input later (e.g. once a client has learnt
/// the input size of a served model).
#[derive(Clone, Debug)]
pub struct Decoded {
    pub path: PathBuf,
    img: DynamicImage,
}

impl Decoded {
    /// Reads and decodes `path` (errors name the file).
    pub fn open(path: &Path) -> Result<Decoded, DataError> {
        let io = |source| DataError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(format_err(
                path,
                FormatProblem::TooLarge,
                format!(
                    "image file of {} bytes (limit {MAX_FILE_BYTES})",
                    meta.len()
                ),
            ));
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Ok(Decoded {
            path: path.to_path_buf(),
            img: decode(path, &bytes)?,
        })
    }

    /// Width and height of the file's image.
    pub fn size(&self) -> (u32, u32) {
        (self.img.width(), self.img.height())
    }

    /// `c x h x w` CHW pixels for a model with that input (see the module docs).
    pub fn to_input(&self, dims: (usize, usize, usize), fit: Fit) -> Result<Vec<u8>, DataError> {
        let (c, h, w) = dims;
        let path = &self.path;
        if !(c == 1 || c == 3) {
            return Err(DataError::Invalid(format!(
                "{}: a model with {c} input channels cannot take image files (1 or 3 channels)",
                path.display()
            )));
        }
        if h == 0 || w == 0 || h > MAX_SIDE as usize || w > MAX_SIDE as usize {
            return Err(DataError::Invalid(format!(
                "{}: model input size {h}x{w} is out of range",
                path.display()
            )));
        }
        Ok(to_chw(
            &fit_image(self.img.clone(), h as u32, w as u32, fit),
            c,
        ))
    }
}

/// Decodes image bytes (format guessed from the content), with limits; errors name `path`.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<DynamicImage, DataError> {
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format_err(path, FormatProblem::Corrupt, e))?;
    if reader.format().is_none() {
        return Err(format_err(
            path,
            FormatProblem::BadMagic,
            "not a PNG, JPEG or PPM/PGM image",
        ));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    reader.decode().map_err(|e| {
        let problem = match &e {
            image::ImageError::Limits(_) => FormatProblem::TooLarge,
            image::ImageError::Unsupported(_) => FormatProblem::Unsupported,
            _ => FormatProblem::Corrupt,
        };
        format_err(path, problem, format!("cannot decode the image: {e}"))
    })
}

/// Brings `img` to `h x w` (see [`Fit`]).
pub fn fit_image(img: DynamicImage, h: u32, w: u32, fit: Fit) -> DynamicImage {
    let img = match fit {
        Fit::Stretch => img,
        Fit::CenterCrop => {
            let (iw, ih) = (img.width() as u64, img.height() as u64);
            // Largest (cw, ch) with cw / ch = w / h inside the image.
            let (cw, ch) = if iw * h as u64 > ih * w as u64 {
                ((ih * w as u64 / h as u64).max(1), ih)
            } else {
                (iw, (iw * h as u64 / w as u64).max(1))
            };
            let (x, y) = ((iw - cw) / 2, (ih - ch) / 2);
            img.crop_imm(x as u32, y as u32, cw as u32, ch as u32)
        }
    };
    if img.width() == w && img.height() == h {
        img
    } else {
        img.resize_exact(w, h, FilterType::Triangle)
    }
}

/// Planar CHW `u8` pixels with `c` (1 or 3) channels.
pub fn to_chw(img: &DynamicImage, c: usize) -> Vec<u8> {
    if c == 1 {
        return img.to_luma8().into_raw();
    }
    let rgb = img.to_rgb8();
    let plane = (rgb.width() * rgb.height()) as usize;
    let mut out = vec![0u8; 3 * plane];
    for (i, px) in rgb.pixels().enumerate() {
        for ch in 0..3 {
            out[ch * plane + i] = px.0[ch];
        }
    }
    out
}

const CIFAR10: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
const FMNIST: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];
const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// The class names of a dataset (SVHN: the digits; `synthetic`: `class-0` ...).
pub fn class_names(name: DatasetName) -> Vec<String> {
    match name {
        DatasetName::Cifar10 => CIFAR10.iter().map(|s| s.to_string()).collect(),
        DatasetName::Fmnist => FMNIST.iter().map(|s| s.to_string()).collect(),
        DatasetName::Svhn => DIGITS.iter().map(|s| s.to_string()).collect(),
        DatasetName::Synthetic => (0..10).map(|i| format!("class-{i}")).collect(),
    }
}

/// The name of class `index` for a model of architecture `arch` (`cifar10`, `svhn`, `fmnist`),
/// or `class-N` when the architecture or index is unknown.
pub fn class_name(arch: &str, index: usize) -> String {
    arch.parse::<DatasetName>()
        .ok()
        .and_then(|d| class_names(d).into_iter().nth(index))
        .unwrap_or_else(|| format!("class-{index}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::image::{ImageFormat, Rgb, RgbImage};

    fn write(
        img: &DynamicImage,
        fmt: ImageFormat,
        ext: &str,
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(format!("img.{ext}"));
        img.save_with_format(&p, fmt).unwrap();
        (d, p)
    }

    fn pattern(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
            Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
        }))
    }

    #[test]
    fn png_and_ppm_of_the_input_size_are_taken_pixel_for_pixel() {
        let img = pattern(32, 32);
        for (fmt, ext) in [(ImageFormat::Png, "png"), (ImageFormat::Pnm, "ppm")] {
            let (_d, p) = write(&img, fmt, ext);
            let chw = load_image(&p, (3, 32, 32), Fit::Stretch).unwrap();
            assert_eq!(chw.len(), 3 * 32 * 32);
            // Pixel (x=3, y=2): R = 21, G = 10, B = 15 in planes 0, 1, 2.
            let i = 2 * 32 + 3;
            assert_eq!(
                (chw[i], chw[1024 + i], chw[2048 + i]),
                (21, 10, 15),
                "{ext}"
            );
        }
    }

    #[test]
    fn jpeg_decodes_to_close_pixels() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(28, 28, Rgb([200, 100, 50])));
        let (_d, p) = write(&img, ImageFormat::Jpeg, "jpg");
        let chw = load_image(&p, (3, 28, 28), Fit::Stretch).unwrap();
        let plane = 28 * 28;
        for (ch, want) in [(0usize, 200i32), (1, 100), (2, 50)] {
            let got = chw[ch * plane + 100] as i32;
            assert!((got - want).abs() <= 4, "channel {ch}: {got} vs {want}");
        }
        // One channel: BT.709 luma of (200, 100, 50) is about 117.
        let g = load_image(&p, (1, 28, 28), Fit::Stretch).unwrap();
        assert_eq!(g.len(), plane);
        assert!((g[100] as i32 - 117).abs() <= 4, "{}", g[100]);
    }

    #[test]
    fn resize_and_center_crop() {
        // Left half black, right half white, 64x32: stretched to 16x16 the left columns are
        // black and the right white; centre-cropped (32x32 from x = 16) the boundary moves to
        // the middle column as well, but the outer quarter is gone: column 0 maps to x = 16.
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(64, 32, |x, _| {
            if x < 32 {
                Rgb([0, 0, 0])
            } else {
                Rgb([255, 255, 255])
            }
        }));
        let s = fit_image(img.clone(), 16, 16, Fit::Stretch);
        assert_eq!((s.width(), s.height()), (16, 16));
        let s = to_chw(&s, 1);
        assert_eq!(s[0], 0);
        assert_eq!(s[15], 255);
        let c = fit_image(img.clone(), 16, 16, Fit::CenterCrop);
        assert_eq!((c.width(), c.height()), (16, 16));
        let c = to_chw(&c, 1);
        assert_eq!(c[0], 0);
        assert_eq!(c[15], 255);
        // A tall image keeps its centre rows: top white band cropped away.
        let tall = DynamicImage::ImageRgb8(RgbImage::from_fn(8, 32, |_, y| {
            if y < 8 {
                Rgb([255, 255, 255])
            } else {
                Rgb([0, 0, 0])
            }
        }));
        let c = to_chw(&fit_image(tall.clone(), 8, 8, Fit::CenterCrop), 1);
        assert!(
            c.iter().all(|&p| p == 0),
            "centre crop of rows 12..20 is black"
        );
        let s = to_chw(&fit_image(tall, 8, 8, Fit::Stretch), 1);
        assert_eq!(s[0], 255, "stretch keeps the white top");
    }

    #[test]
    fn corrupt_and_unreadable_files_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("missing.png");
        let e = load_image(&missing, (3, 32, 32), Fit::Stretch)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.png"), "{e}");
        let junk = d.path().join("junk.png");
        std::fs::write(&junk, b"this is not an image at all").unwrap();
        let e = load_image(&junk, (3, 32, 32), Fit::Stretch)
            .unwrap_err()
            .to_string();
        assert!(e.contains("junk.png") && e.contains("not a PNG"), "{e}");
        // A PNG cut in half: the header is right, the data is not.
        let (_d2, p) = write(&pattern(40, 40), ImageFormat::Png, "png");
        let mut b = std::fs::read(&p).unwrap();
        b.truncate(b.len() / 2);
        let cut = d.path().join("cut.png");
        std::fs::write(&cut, &b).unwrap();
        let e = load_image(&cut, (3, 32, 32), Fit::Stretch)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cut.png") && e.contains("cannot decode"), "{e}");
        // A PPM announcing a huge image is refused by the limits, not allocated.
        let bomb = d.path().join("bomb.ppm");
        std::fs::write(&bomb, b"P6\n100000 100000\n255\n\x00\x00\x00").unwrap();
        let e = load_image(&bomb, (3, 32, 32), Fit::Stretch)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bomb.ppm"), "{e}");
        // A model with 2 channels cannot take image files.
        let (_d3, ok) = write(&pattern(4, 4), ImageFormat::Png, "png");
        assert!(load_image(&ok, (2, 4, 4), Fit::Stretch).is_err());
    }

    #[test]
    fn class_names_of_the_paper_models() {
        assert_eq!(class_name("cifar10", 3), "cat");
        assert_eq!(class_name("fmnist", 9), "Ankle boot");
        assert_eq!(class_name("svhn", 7), "7");
        assert_eq!(class_name("cifar10", 12), "class-12");
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            /// Mutated PNG bytes decode or fail cleanly, never panic.
            #[test]
            fn mutated_pngs_never_panic(pos in any::<prop::sample::Index>(), val in any::<u8>()) {
                let mut buf = std::io::Cursor::new(Vec::new());
                pattern(12, 9).write_to(&mut buf, ImageFormat::Png).unwrap();
                let mut b = buf.into_inner();
                let i = pos.index(b.len());
                b[i] = val;
                if let Ok(img) = decode(Path::new("x.png"), &b) {
                    let _ = to_chw(&fit_image(img, 8, 8, Fit::CenterCrop), 3);
                }
            }
        }
    }
}
