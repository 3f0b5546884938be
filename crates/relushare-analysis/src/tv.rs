//! Total variation of activation maps (the paper's Figure 3).
//!
//! For one `[C, H, W]` tensor, `TV = sum_c sum_{y,x} |a[c,y+1,x] - a[c,y,x]| + |a[c,y,x+1] -
//! a[c,y,x]|` (anisotropic, forward differences inside the plane). We accumulate it over
//! images and report, per layer: the TV per channel (the paper's "sum of absolute spatial
//! gradients"), the TV per activation (comparable across plane sizes) and the TV relative to
//! the mean absolute activation (scale free, comparable across layers whose magnitudes differ).

use serde::{Deserialize, Serialize};

/// Total variation and mean absolute value of one `[c, h, w]` tensor.
pub fn total_variation(a: &[f32], c: usize, h: usize, w: usize) -> (f64, f64) {
    assert_eq!(
        a.len(),
        c * h * w,
        "tensor length does not match {c}x{h}x{w}"
    );
    let mut tv = 0f64;
    let mut abs = 0f64;
    for ch in 0..c {
        let p = &a[ch * h * w..(ch + 1) * h * w];
        for y in 0..h {
            for x in 0..w {
                let v = p[y * w + x];
                abs += v.abs() as f64;
                if y + 1 < h {
                    tv += (p[(y + 1) * w + x] - v).abs() as f64;
                }
                if x + 1 < w {
                    tv += (p[y * w + x + 1] - v).abs() as f64;
                }
            }
        }
    }
    (tv, abs)
}

/// Running total-variation statistics of one layer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TvAccumulator {
    pub layer: String,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub images: usize,
    pub tv_sum: f64,
    pub abs_sum: f64,
}

impl TvAccumulator {
    pub fn new(layer: &str, c: usize, h: usize, w: usize) -> Self {
        Self {
            layer: layer.to_string(),
            c,
            h,
            w,
            ..Default::default()
        }
    }

    /// Adds one image's activation tensor.
    pub fn add(&mut self, a: &[f32]) {
        let (tv, abs) = total_variation(a, self.c, self.h, self.w);
        self.tv_sum += tv;
        self.abs_sum += abs;
        self.images += 1;
    }

    /// Merges another accumulator of the same layer (parallel reduction).
    pub fn merge(&mut self, o: &TvAccumulator) {
        self.tv_sum += o.tv_sum;
        self.abs_sum += o.abs_sum;
        self.images += o.images;
    }

    /// The finished row.
    pub fn row(&self, index: usize) -> TvRow {
        let n = self.images.max(1) as f64;
        let acts = (self.c * self.h * self.w).max(1) as f64;
        let tv_per_image = self.tv_sum / n;
        let abs_per_act = self.abs_sum / n / acts;
        let tv_per_act = tv_per_image / acts;
        TvRow {
            index,
            layer: self.layer.clone(),
            c: self.c,
            h: self.h,
            w: self.w,
            images: self.images,
            tv_per_channel: tv_per_image / self.c.max(1) as f64,
            tv_per_activation: tv_per_act,
            mean_abs: abs_per_act,
            tv_relative: if abs_per_act > 0.0 {
                tv_per_act / abs_per_act
            } else {
                0.0
            },
        }
    }
}

/// Total variation of one layer averaged over images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TvRow {
    /// 1-based position among the traced layers (the x axis of Figure 3).
    pub index: usize,
    pub layer: String,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub images: usize,
    /// Mean over images of the TV of one channel plane.
    pub tv_per_channel: f64,
    /// Mean over images and activations.
    pub tv_per_activation: f64,
    /// Mean absolute activation.
    pub mean_abs: f64,
    /// `tv_per_activation / mean_abs`.
    pub tv_relative: f64,
}

/// CSV text of the rows (header included).
pub fn to_csv(rows: &[TvRow]) -> String {
    let mut s = String::from(
        "index,layer,c,h,w,images,tv_per_channel,tv_per_activation,mean_abs,tv_relative\n",
    );
    for r in rows {
        s.push_str(&format!(
            "{},{},{},{},{},{},{:.6},{:.6},{:.6},{:.6}\n",
            r.index,
            r.layer,
            r.c,
            r.h,
            r.w,
            r.images,
            r.tv_per_channel,
            r.tv_per_activation,
            r.mean_abs,
            r.tv_relative
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_has_zero_tv() {
        let a = vec![3.0f32; 2 * 4 * 5];
        let (tv, abs) = total_variation(&a, 2, 4, 5);
        assert_eq!(tv, 0.0);
        assert_eq!(abs, 120.0);
    }

    #[test]
    fn hand_computed() {
        // one channel 2x2: [[0,1],[2,4]] -> |2-0|+|1-0| + |4-1| + |4-2| = 8
        let a = [0.0f32, 1.0, 2.0, 4.0];
        assert_eq!(total_variation(&a, 1, 2, 2).0, 8.0);
        // channels do not mix: second channel constant
        let b = [0.0f32, 1.0, 2.0, 4.0, 9.0, 9.0, 9.0, 9.0];
        assert_eq!(total_variation(&b, 2, 2, 2).0, 8.0);
    }

    #[test]
    fn accumulator_averages_and_merges() {
        let mut a = TvAccumulator::new("act1", 1, 2, 2);
        a.add(&[0.0, 1.0, 2.0, 4.0]);
        let mut b = TvAccumulator::new("act1", 1, 2, 2);
        b.add(&[0.0, 0.0, 0.0, 0.0]);
        a.merge(&b);
        let r = a.row(1);
        assert_eq!(r.images, 2);
        assert_eq!(r.tv_per_channel, 4.0);
        assert_eq!(r.tv_per_activation, 1.0);
        assert_eq!(r.mean_abs, 7.0 / 8.0);
        assert!(to_csv(&[r])
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("1,act1,1,2,2,2,4.0"));
    }

    #[test]
    fn checkerboard_beats_smooth_ramp() {
        let (h, w) = (8, 8);
        let ramp: Vec<f32> = (0..h * w).map(|i| (i % w) as f32 / w as f32).collect();
        let check: Vec<f32> = (0..h * w).map(|i| ((i / w + i % w) % 2) as f32).collect();
        assert!(total_variation(&check, 1, h, w).0 > 10.0 * total_variation(&ramp, 1, h, w).0);
    }
}
