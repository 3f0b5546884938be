//! A procedural 10-class image dataset of any size (used by the demo and the tests).
//!
//! Class `k` is a shape (`k % 5`: disk, square, triangle, plus, ring) filled with a sinusoidal
//! grating whose orientation and size depend on `k / 5` (about 30 degrees and large, or about
//! 120 degrees and small; orientation jittered by up to 20 degrees, sizes drawn from ranges),
//! tinted towards a class colour (mixed half-and-half with a random colour), on a darker
//! background of random colour carrying a faint grating of random orientation. Each image has a
//! random shape size, rotation, translation (up to a tenth of the image side), grating period
//! and phase, and Gaussian pixel noise. A nearest-class-mean classifier reaches about 50%
//! (colour) / 35% (grey) on it, chance being 10%: it can use the average footprint, size and
//! tint but not the orientation, which needs local oriented filters (what a CNN learns); so the
//! task is learnable but not trivial.
//!
//! Images are deterministic from `(seed, split, index)`: each image has its own generator state,
//! so sets of different sizes agree on their common prefix, and train/test never coincide.
//! The generator is our own SplitMix64 (not `rand`), so outputs do not change with crate versions.

use crate::{ImageSet, Split};

/// Class tints (RGB in [0,1]); channel `c` of a `C`-channel image uses component `c % 3`.
const PALETTE: [[f32; 3]; 10] = [
    [0.90, 0.20, 0.20],
    [0.20, 0.80, 0.25],
    [0.25, 0.35, 0.95],
    [0.95, 0.85, 0.20],
    [0.80, 0.30, 0.85],
    [0.20, 0.85, 0.85],
    [0.95, 0.55, 0.15],
    [0.55, 0.95, 0.55],
    [0.55, 0.55, 0.95],
    [0.85, 0.85, 0.85],
];

/// SplitMix64: tiny, fast, good enough for procedural content (never for secrets).
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix(seed)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    pub(crate) fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }
    /// Approximately standard normal: the sum of four 16-bit uniforms from one draw, rescaled
    /// (Irwin-Hall; bounded at +-3.46 sd, which is fine for pixel noise).
    pub(crate) fn normal(&mut self) -> f32 {
        let x = self.next_u64();
        let s = (x & 0xffff) + ((x >> 16) & 0xffff) + ((x >> 32) & 0xffff) + (x >> 48);
        (s as f32 / 65536.0 - 2.0) * 1.732_050_8
    }
}

fn image_seed(seed: u64, split: Split, index: usize) -> u64 {
    let split_tag: u64 = match split {
        Split::Train => 0x7472_6169_6e00_0001,
        Split::Test => 0x7465_7374_0000_0002,
    };
    let mut m = SplitMix::new(seed ^ split_tag);
    let a = m.next_u64();
    let mut m2 = SplitMix::new(a ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    m2.next_u64()
}

/// Signed "inside" measure of shape `kind` at rotated, size-normalised coordinates (<= 1: inside).
fn shape_measure(kind: usize, px: f32, py: f32) -> f32 {
    match kind {
        0 => (px * px + py * py).sqrt(),
        1 => px.abs().max(py.abs()) * 1.2,
        2 => {
            // Equilateral triangle pointing up (image y grows downwards).
            let a = py;
            let b = -0.5 * py + 0.866 * px;
            let c = -0.5 * py - 0.866 * px;
            a.max(b).max(c) * 1.9
        }
        3 => {
            let bar1 = (px.abs() / 0.33).max(py.abs());
            let bar2 = px.abs().max(py.abs() / 0.33);
            bar1.min(bar2) * 1.05
        }
        _ => ((px * px + py * py).sqrt() - 0.7).abs() / 0.28,
    }
}

/// Renders image `index` of the synthetic set into `out` (planar CHW, len `c*h*w`) and returns
/// its label.
pub fn render(
    dims: (usize, usize, usize),
    seed: u64,
    split: Split,
    index: usize,
    out: &mut [u8],
) -> u8 {
    let (c, h, w) = dims;
    assert_eq!(out.len(), c * h * w, "output buffer has the wrong size");
    let mut rng = SplitMix::new(image_seed(seed, split, index));
    let label = (rng.next_u64() % 10) as usize;
    let kind = label % 5;
    let orient = label / 5;
    let scale = h.min(w) as f32;

    // Geometry (in units of half the image's shorter side).
    let cx = rng.range(-0.2, 0.2);
    let cy = rng.range(-0.2, 0.2);
    let radius = if orient == 0 {
        rng.range(0.55, 0.72)
    } else {
        rng.range(0.38, 0.52)
    };
    let rot = rng.range(-0.35, 0.35);
    let (rs, rc) = rot.sin_cos();
    // Foreground grating.
    let theta = (30.0 + 90.0 * orient as f32 + rng.range(-20.0, 20.0)).to_radians();
    let (ts, tc) = theta.sin_cos();
    let period = rng.range(3.5, 6.0) * scale / 32.0;
    let freq = std::f32::consts::TAU / period.max(2.0);
    let phase = rng.range(0.0, std::f32::consts::TAU);
    // Background distractor grating of random orientation.
    let btheta = rng.range(0.0, std::f32::consts::PI);
    let (bs, bc) = btheta.sin_cos();
    let bfreq = std::f32::consts::TAU / (rng.range(3.5, 8.0) * scale / 32.0).max(2.0);
    let bphase = rng.range(0.0, std::f32::consts::TAU);
    // Colours: brightness contrast between shape and background, tint partly from the class.
    let bg_lum = rng.range(0.15, 0.45);
    let fg_lum = bg_lum + rng.range(0.3, 0.5);
    let mut rand_tint = [0f32; 3];
    let mut bg_tint = [0f32; 3];
    for k in 0..3 {
        rand_tint[k] = rng.range(0.2, 1.0);
        bg_tint[k] = rng.range(0.5, 1.0);
    }
    let noise_sd = 0.10;

    // Per-channel colour factors, hoisted out of the pixel loop.
    let fg_c: Vec<f32> = (0..c)
        .map(|ch| {
            let k = ch % 3;
            let tint = if c == 1 {
                1.0
            } else {
                0.5 * PALETTE[label][k] + 0.5 * rand_tint[k]
            };
            fg_lum * tint * 1.3
        })
        .collect();
    let bg_c: Vec<f32> = (0..c)
        .map(|ch| bg_lum * if c == 1 { 1.0 } else { bg_tint[ch % 3] })
        .collect();
    let plane = h * w;
    let half = scale / 2.0;
    for y in 0..h {
        for x in 0..w {
            let fx = (x as f32 + 0.5 - w as f32 / 2.0) / half;
            let fy = (y as f32 + 0.5 - h as f32 / 2.0) / half;
            let dx = (fx - cx) / radius;
            let dy = (fy - cy) / radius;
            let px = rc * dx + rs * dy;
            let py = -rs * dx + rc * dy;
            let d = shape_measure(kind, px, py);
            let alpha = ((1.1 - d) / 0.2).clamp(0.0, 1.0);
            let g = 0.5 + 0.5 * (freq * (x as f32 * tc + y as f32 * ts) + phase).sin();
            let bgg = 0.5 + 0.5 * (bfreq * (x as f32 * bc + y as f32 * bs) + bphase).sin();
            let fg_mod = 0.45 + 0.55 * g;
            let bg_mod = 0.85 + 0.15 * bgg;
            let at = y * w + x;
            for ch in 0..c {
                let v = alpha * fg_c[ch] * fg_mod
                    + (1.0 - alpha) * bg_c[ch] * bg_mod
                    + noise_sd * rng.normal();
                out[ch * plane + at] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
    label as u8
}

/// `n` synthetic images of dims `(channels, height, width)`; deterministic from `seed`, and the
/// train and test splits are different images.
pub fn synthetic(dims: (usize, usize, usize), n: usize, seed: u64, split: Split) -> ImageSet {
    let (c, h, w) = dims;
    let chw = c * h * w;
    let mut images = vec![0u8; n * chw];
    let mut labels = vec![0u8; n];
    if chw > 0 {
        for (i, (img, lab)) in images
            .chunks_exact_mut(chw)
            .zip(labels.iter_mut())
            .enumerate()
        {
            *lab = render(dims, seed, split, i, img);
        }
    }
    ImageSet {
        channels: c,
        height: h,
        width: w,
        images,
        labels,
        num_classes: 10,
    }
}
