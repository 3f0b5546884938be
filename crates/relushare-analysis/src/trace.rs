//! Activation traces of the plain f32 reference network over a set of images: bit-packed ReLU
//! responses of chosen layers (input of [`crate::cluster`]) and total variation of every
//! activation layer's output (Figure 3). Images run in parallel (rayon) through
//! `relushare_model::reference::forward_trace`, noise-free.

use crate::cluster::BitMatrix;
use crate::tv::{TvAccumulator, TvRow};
use crate::AnalysisError;
use rayon::prelude::*;
use relushare_data::ImageSet;
use relushare_model::reference::forward_trace;
use relushare_model::{Dims, Layer, Model};

/// Index in `spec.layers` and input dims of the activation layer `name`.
pub fn act_layer(model: &Model, name: &str) -> Result<(usize, Dims), AnalysisError> {
    let dims = model.spec.dims()?;
    let acts = model.spec.act_names();
    for (i, l) in model.spec.layers.iter().enumerate() {
        if l.name() == name {
            return match l {
                Layer::Act { .. } => Ok((i, dims[i])),
                _ => Err(AnalysisError::Invalid(format!(
                    "layer {name} is not an activation layer (activation layers: {})",
                    acts.join(", ")
                ))),
            };
        }
    }
    Err(AnalysisError::Invalid(format!(
        "the model has no layer {name} (activation layers: {})",
        acts.join(", ")
    )))
}

fn check_images(model: &Model, set: &ImageSet) -> Result<(), AnalysisError> {
    let d = model.spec.input;
    if set.dims() != (d.c, d.h, d.w) {
        return Err(AnalysisError::Shape(format!(
            "images are {}x{}x{}, the model expects {d}",
            set.channels, set.height, set.width
        )));
    }
    if set.is_empty() {
        return Err(AnalysisError::Invalid("no images".into()));
    }
    Ok(())
}

fn normalized(model: &Model, set: &ImageSet, i: usize) -> Vec<f32> {
    let mut x = vec![0f32; set.image_len()];
    model.spec.normalization.apply(set.image(i), &mut x);
    x
}

/// The pre-activation tensors of all layers for one image (`trace[i]` is the input of layer
/// `i`), noise-free.
pub fn trace_image(
    model: &Model,
    set: &ImageSet,
    i: usize,
) -> Result<Vec<Vec<f32>>, AnalysisError> {
    check_images(model, set)?;
    Ok(forward_trace(
        model,
        &normalized(model, set, i),
        &mut |_| false,
    )?)
}

/// ReLU responses of one activation layer over the images.
#[derive(Debug, Clone)]
pub struct LayerResponses {
    pub layer: String,
    pub dims: Dims,
    /// One vector per activation (CHW order), one bit per image: pre-activation `>= 0`.
    pub bits: BitMatrix,
}

/// Records, for each layer in `layers`, whether every activation's pre-activation is `>= 0`
/// (ReLU keeps it) on every image of `set`. `progress` is called with the number of images
/// done so far.
pub fn relu_responses(
    model: &Model,
    set: &ImageSet,
    layers: &[String],
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<LayerResponses>, AnalysisError> {
    check_images(model, set)?;
    if layers.is_empty() {
        return Err(AnalysisError::Invalid("no layer to record".into()));
    }
    let targets: Vec<(usize, Dims)> = layers
        .iter()
        .map(|l| act_layer(model, l))
        .collect::<Result<_, _>>()?;
    // only the layers up to the deepest recorded one need to run
    let last = targets.iter().map(|(i, _)| *i).max().unwrap_or(0);
    let mut short = model.clone();
    short.spec.layers.truncate(last + 1);
    let kept: std::collections::BTreeSet<String> = short
        .spec
        .layers
        .iter()
        .map(|l| l.name().to_string())
        .collect();
    short.spec.inputs.retain(|k, _| kept.contains(k));
    let model = &short;
    let n = set.len();
    let mut out: Vec<LayerResponses> = layers
        .iter()
        .zip(&targets)
        .map(|(l, &(_, d))| LayerResponses {
            layer: l.clone(),
            dims: d,
            bits: BitMatrix::new(d.len(), n),
        })
        .collect();
    let words = n.div_ceil(64);
    // a few 64-image words per parallel batch keeps the memory of partial results small
    let batch = (rayon::current_num_threads() * 2).max(1);
    let mut done = 0usize;
    for first in (0..words).step_by(batch) {
        let last = (first + batch).min(words);
        let parts: Vec<Vec<Vec<u64>>> = (first..last)
            .into_par_iter()
            .map(|word| -> Result<Vec<Vec<u64>>, AnalysisError> {
                let mut acc: Vec<Vec<u64>> =
                    targets.iter().map(|(_, d)| vec![0u64; d.len()]).collect();
                for img in word * 64..((word + 1) * 64).min(n) {
                    let t = forward_trace(model, &normalized(model, set, img), &mut |_| false)?;
                    let bit = 1u64 << (img % 64);
                    for ((li, _), a) in targets.iter().zip(acc.iter_mut()) {
                        for (w, &s) in a.iter_mut().zip(&t[*li]) {
                            if s >= 0.0 {
                                *w |= bit;
                            }
                        }
                    }
                }
                Ok(acc)
            })
            .collect::<Result<_, _>>()?;
        for (wi, part) in (first..last).zip(parts) {
            for (o, a) in out.iter_mut().zip(part) {
                for (item, v) in a.into_iter().enumerate() {
                    o.bits.set_word(item, wi, v);
                }
            }
        }
        done = (last * 64).min(n);
        progress(done);
    }
    debug_assert_eq!(done, n);
    Ok(out)
}

/// Total variation of the output of every activation layer, averaged over `set`.
pub fn total_variation(
    model: &Model,
    set: &ImageSet,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<TvRow>, AnalysisError> {
    check_images(model, set)?;
    let dims = model.spec.dims()?;
    let acts: Vec<(usize, String, Dims)> = model
        .spec
        .layers
        .iter()
        .enumerate()
        .filter(|(_, l)| matches!(l, Layer::Act { .. }))
        .map(|(i, l)| (i, l.name().to_string(), dims[i + 1]))
        .collect();
    let fresh = || -> Vec<TvAccumulator> {
        acts.iter()
            .map(|(_, n, d)| TvAccumulator::new(n, d.c, d.h, d.w))
            .collect()
    };
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let total = (0..set.len())
        .into_par_iter()
        .try_fold(fresh, |mut acc, i| -> Result<_, AnalysisError> {
            let t = forward_trace(model, &normalized(model, set, i), &mut |_| false)?;
            for ((li, _, _), a) in acts.iter().zip(acc.iter_mut()) {
                a.add(&t[li + 1]);
            }
            let c = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if c.is_multiple_of(64) {
                progress(c);
            }
            Ok(acc)
        })
        .try_reduce(fresh, |mut a, b| {
            for (x, y) in a.iter_mut().zip(&b) {
                x.merge(y);
            }
            Ok(a)
        })?;
    progress(set.len());
    Ok(total
        .iter()
        .enumerate()
        .map(|(i, a)| a.row(i + 1))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use relushare_data::{synthetic, Split};
    use relushare_model::{presets, Arch};

    #[test]
    fn responses_match_single_image_traces() {
        let model =
            Model::random(presets::build(Arch::Svhn, "original").unwrap(), None, 1).unwrap();
        let set = synthetic((3, 32, 32), 70, 3, Split::Train);
        let layers = vec!["act1".to_string(), "act2".to_string()];
        let r = relu_responses(&model, &set, &layers, &|_| {}).unwrap();
        assert_eq!(r[0].dims, Dims::new(32, 29, 29));
        assert_eq!(r[0].bits.samples(), 70);
        for img in [0usize, 1, 63, 64, 69] {
            let t = trace_image(&model, &set, img).unwrap();
            let (i1, _) = act_layer(&model, "act1").unwrap();
            let (i2, _) = act_layer(&model, "act2").unwrap();
            for (resp, li) in r.iter().zip([i1, i2]) {
                for (item, &s) in t[li].iter().enumerate() {
                    assert_eq!(resp.bits.get(item, img), s >= 0.0, "img {img} item {item}");
                }
            }
        }
        assert!(act_layer(&model, "conv1").is_err());
        assert!(act_layer(&model, "act9").is_err());
    }

    #[test]
    fn tv_rows_for_every_activation_layer() {
        let model =
            Model::random(presets::build(Arch::Fmnist, "original").unwrap(), None, 2).unwrap();
        let set = synthetic((1, 28, 28), 8, 3, Split::Test);
        let rows = total_variation(&model, &set, &|_| {}).unwrap();
        let names: Vec<&str> = rows.iter().map(|r| r.layer.as_str()).collect();
        assert_eq!(names, ["act1", "act2", "act3"]);
        assert!(rows.iter().all(|r| r.images == 8));
        assert!(rows[0].tv_per_channel > 0.0);
        // act3 follows a linear layer: a 128x1x1 map has no spatial neighbours
        assert_eq!(rows[2].tv_per_channel, 0.0);
        // wrong image size is an error
        let bad = synthetic((3, 32, 32), 2, 3, Split::Test);
        assert!(total_variation(&model, &bad, &|_| {}).is_err());
    }
}
