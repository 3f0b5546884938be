//! Turning `u8` CHW images into normalized `f32` batches, with optional CIFAR-style
//! augmentation (random crop from the image zero-padded by 4 pixels, random horizontal flip).

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use relushare_data::ImageSet;
use relushare_model::Normalization;

/// Training-time augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Augmentation {
    /// Images as they are.
    #[default]
    None,
    /// Random crop with 4-pixel zero padding plus random horizontal flip (CIFAR-10 style).
    CropFlip,
    /// Random crop with 4-pixel zero padding only (for digits, where flips change meaning).
    Crop,
}

impl Augmentation {
    /// The usual choice for a dataset: crop+flip for CIFAR-10, crop for SVHN, none otherwise.
    pub fn for_dataset(name: &str) -> Self {
        match name {
            "cifar10" => Augmentation::CropFlip,
            "svhn" => Augmentation::Crop,
            _ => Augmentation::None,
        }
    }
}

/// The usual normalization of a dataset (from `relushare-data`), as the model file stores it.
pub fn normalization_for(dataset: relushare_data::DatasetName, channels: usize) -> Normalization {
    let n = relushare_data::normalization(dataset, channels);
    Normalization {
        mean: n.mean,
        std: n.std,
    }
}

/// Padding of the random crop.
pub const CROP_PADDING: usize = 4;

/// Writes the normalized images `indices` of `set` (CHW, one after the other) into `out`,
/// augmented with `aug` (drawing from `rng`).
pub fn fill_batch(
    set: &ImageSet,
    indices: &[usize],
    norm: &Normalization,
    aug: Augmentation,
    rng: &mut ChaCha8Rng,
    out: &mut Vec<f32>,
) {
    let (c, h, w) = (set.channels, set.height, set.width);
    let n = c * h * w;
    out.clear();
    out.resize(indices.len() * n, 0.0);
    // Normalized value of each channel's padding pixel (raw 0).
    let pad: Vec<f32> = (0..c)
        .map(|ch| (0.0 - norm.mean[ch]) / norm.std[ch])
        .collect();
    let scale: Vec<f32> = (0..c).map(|ch| 1.0 / (255.0 * norm.std[ch])).collect();
    let shift: Vec<f32> = (0..c).map(|ch| norm.mean[ch] / norm.std[ch]).collect();
    for (b, &i) in indices.iter().enumerate() {
        let img = set.image(i);
        let dst = &mut out[b * n..(b + 1) * n];
        let (dy, dx, flip) = match aug {
            Augmentation::None => (0isize, 0isize, false),
            Augmentation::Crop | Augmentation::CropFlip => {
                let p = CROP_PADDING as isize;
                let dy = rng.random_range(0..=2 * p as i64) as isize - p;
                let dx = rng.random_range(0..=2 * p as i64) as isize - p;
                let flip = aug == Augmentation::CropFlip && rng.random::<bool>();
                (dy, dx, flip)
            }
        };
        for ch in 0..c {
            let src = &img[ch * h * w..(ch + 1) * h * w];
            let d = &mut dst[ch * h * w..(ch + 1) * h * w];
            for y in 0..h {
                let sy = y as isize + dy;
                for x in 0..w {
                    let xx = if flip { w - 1 - x } else { x };
                    let sx = xx as isize + dx;
                    d[y * w + x] = if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                        pad[ch]
                    } else {
                        src[sy as usize * w + sx as usize] as f32 * scale[ch] - shift[ch]
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn set() -> ImageSet {
        // 2 images, 1 channel 2x3.
        ImageSet::new(
            (1, 2, 3),
            vec![0, 51, 102, 153, 204, 255, 1, 2, 3, 4, 5, 6],
            vec![0, 1],
            2,
        )
        .unwrap()
    }

    #[test]
    fn plain_batch_is_normalized() {
        let norm = Normalization {
            mean: vec![0.5],
            std: vec![0.5],
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut out = Vec::new();
        fill_batch(&set(), &[0], &norm, Augmentation::None, &mut rng, &mut out);
        let want: Vec<f32> = [0u8, 51, 102, 153, 204, 255]
            .iter()
            .map(|&p| (p as f32 / 255.0 - 0.5) / 0.5)
            .collect();
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{out:?} vs {want:?}");
        }
        // Same as the model's own normalization.
        let mut direct = vec![0f32; 6];
        norm.apply(set().image(0), &mut direct);
        for (a, b) in out.iter().zip(&direct) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn crop_flip_moves_pixels_and_pads() {
        let norm = Normalization::identity(1);
        let s = ImageSet::new(
            (1, 8, 8),
            (0..64).map(|v| v as u8 + 1).collect(),
            vec![0],
            1,
        )
        .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut seen_changed = false;
        let mut seen_pad = false;
        for _ in 0..20 {
            let mut out = Vec::new();
            fill_batch(&s, &[0], &norm, Augmentation::CropFlip, &mut rng, &mut out);
            assert_eq!(out.len(), 64);
            let orig: Vec<f32> = (0..64).map(|v| (v as f32 + 1.0) / 255.0).collect();
            seen_changed |= out != orig;
            seen_pad |= out.contains(&0.0);
            // Every non-pad value is a pixel of the image.
            assert!(out
                .iter()
                .all(|&v| v == 0.0 || orig.iter().any(|&o| (o - v).abs() < 1e-7)));
        }
        assert!(seen_changed && seen_pad);
    }
}
