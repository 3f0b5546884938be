//! Dataset formats: CIFAR-10 binary, SVHN `.mat`, Fashion-MNIST IDX/gzip, checksummed download, synthetic data.
//!
//! Everything is loaded into an [`ImageSet`]: `u8` images in planar CHW order (one image after
//! the other) with `u8` labels. [`load`] reads a split of a dataset from the directory layout the
//! official downloads unpack to (see [`fetch()`]):
//!
//! - CIFAR-10: `DIR/cifar-10-batches-bin/data_batch_{1..5}.bin`, `test_batch.bin`
//!   (a partial training set is accepted with a warning);
//! - Fashion-MNIST: `DIR/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`;
//! - SVHN: `DIR/svhn/{train,test}_32x32.mat` (MATLAB v5, read by [`mat`]);
//! - `synthetic`: generated in memory ([`synthetic()`]), no files.
//!
//! Every decoder treats its input as hostile: sizes are checked before allocating, and a
//! truncated, corrupt or mismatched file gives a [`DataError`] naming the file and the problem.

pub mod cifar;
mod error;
pub mod fetch;
pub mod idx;
pub mod image;
pub mod mat;
pub mod synthetic;
mod util;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use error::{DataError, FormatProblem};
pub use fetch::{
    fetch, fetch_from, fetch_local, fetch_or_local, local_copies, FetchReport, FetchedFile,
    FileAction,
};
pub use synthetic::synthetic;

/// Seed of the synthetic set that [`load`] returns.
pub const SYNTHETIC_SEED: u64 = 0x5EED_0001;
/// Images in the synthetic training split when no limit is given.
pub const SYNTHETIC_TRAIN_SIZE: usize = 10_000;
/// Images in the synthetic test split when no limit is given.
pub const SYNTHETIC_TEST_SIZE: usize = 2_000;

/// The datasets this crate knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetName {
    Cifar10,
    Svhn,
    Fmnist,
    Synthetic,
}

impl DatasetName {
    /// All datasets.
    pub const ALL: [DatasetName; 4] = [
        DatasetName::Cifar10,
        DatasetName::Svhn,
        DatasetName::Fmnist,
        DatasetName::Synthetic,
    ];

    /// Image dims `(channels, height, width)` of a real dataset; `None` for `synthetic`, whose
    /// dims are chosen by the caller.
    pub fn dims(self) -> Option<(usize, usize, usize)> {
        match self {
            DatasetName::Cifar10 | DatasetName::Svhn => Some((3, 32, 32)),
            DatasetName::Fmnist => Some((1, 28, 28)),
            DatasetName::Synthetic => None,
        }
    }

    /// Number of classes (10 for all of them).
    pub fn num_classes(self) -> usize {
        10
    }

    /// The name as used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::Cifar10 => "cifar10",
            DatasetName::Svhn => "svhn",
            DatasetName::Fmnist => "fmnist",
            DatasetName::Synthetic => "synthetic",
        }
    }
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DatasetName {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s.to_ascii_lowercase().as_str() {
            "cifar10" | "cifar-10" => Ok(DatasetName::Cifar10),
            "svhn" => Ok(DatasetName::Svhn),
            "fmnist" | "fashion-mnist" | "fashionmnist" => Ok(DatasetName::Fmnist),
            "synthetic" => Ok(DatasetName::Synthetic),
            _ => Err(DataError::UnknownDataset(s.to_string())),
        }
    }
}

/// Training or test split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

impl FromStr for Split {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            _ => Err(DataError::Invalid(format!(
                "unknown split `{s}` (expected train or test)"
            ))),
        }
    }
}

/// A set of labelled `u8` images, planar CHW, stored one after the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSet {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// `len() * channels * height * width` bytes.
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub num_classes: usize,
}

impl ImageSet {
    /// Builds a set, checking that the buffers agree with the dims and the labels are in range.
    pub fn new(
        dims: (usize, usize, usize),
        images: Vec<u8>,
        labels: Vec<u8>,
        num_classes: usize,
    ) -> Result<Self, DataError> {
        let (c, h, w) = dims;
        let chw = c
            .checked_mul(h)
            .and_then(|x| x.checked_mul(w))
            .filter(|&x| x > 0)
            .ok_or_else(|| DataError::Invalid(format!("invalid image dims {c}x{h}x{w}")))?;
        if images.len() != labels.len() * chw {
            return Err(DataError::Invalid(format!(
                "{} image bytes for {} labels of {c}x{h}x{w} images",
                images.len(),
                labels.len()
            )));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= num_classes)
        {
            return Err(DataError::Invalid(format!(
                "label {l} of image {i} is not below {num_classes}"
            )));
        }
        Ok(ImageSet {
            channels: c,
            height: h,
            width: w,
            images,
            labels,
            num_classes,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `(channels, height, width)`.
    pub fn dims(&self) -> (usize, usize, usize) {
        (self.channels, self.height, self.width)
    }

    /// Bytes per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Image `i`, planar CHW.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// Label of image `i`.
    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }

    /// Keeps the first `n` images (no-op if there are fewer).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.labels.truncate(n);
            self.images.truncate(n * self.image_len());
        }
    }

    /// Number of images of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }
}

/// A loaded split plus anything the user should know (e.g. missing CIFAR-10 batches).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub set: ImageSet,
    pub warnings: Vec<String>,
}

fn fetch_hint(name: DatasetName) -> String {
    format!(
        "download it with `relushare data fetch --dataset {name} --data-dir DIR`, or place the official files there"
    )
}

fn not_found(path: PathBuf, name: DatasetName) -> DataError {
    DataError::NotFound {
        path,
        hint: fetch_hint(name),
    }
}

/// Loads a split of a dataset (at most `limit` images, the first ones). `data_dir` is required
/// for the real datasets; `synthetic_dims` are `(channels, height, width)` of synthetic images
/// (ignored otherwise), and the synthetic set has [`SYNTHETIC_TRAIN_SIZE`] /
/// [`SYNTHETIC_TEST_SIZE`] images unless limited.
pub fn load(
    name: DatasetName,
    split: Split,
    data_dir: Option<&Path>,
    limit: Option<usize>,
    synthetic_dims: (usize, usize, usize),
) -> Result<Loaded, DataError> {
    let mut warnings = Vec::new();
    let set = match name {
        DatasetName::Synthetic => {
            let (c, h, w) = synthetic_dims;
            if c == 0 || h == 0 || w == 0 || c > 64 || h > 4096 || w > 4096 {
                return Err(DataError::Invalid(format!(
                    "synthetic dims {c}x{h}x{w} are out of range (1..=64 channels, 1..=4096 pixels a side)"
                )));
            }
            let n = limit.unwrap_or(match split {
                Split::Train => SYNTHETIC_TRAIN_SIZE,
                Split::Test => SYNTHETIC_TEST_SIZE,
            });
            if (n as u128) * ((c * h * w) as u128) > util::MAX_PAYLOAD as u128 {
                return Err(DataError::Invalid(format!(
                    "{n} synthetic images of {c}x{h}x{w} exceed the {} byte limit",
                    util::MAX_PAYLOAD
                )));
            }
            return Ok(Loaded {
                set: synthetic(synthetic_dims, n, SYNTHETIC_SEED, split),
                warnings,
            });
        }
        _ => {
            let dir = data_dir.ok_or_else(|| DataError::NoDataDir {
                dataset: name.to_string(),
            })?;
            match name {
                DatasetName::Cifar10 => load_cifar(dir, split, limit, &mut warnings)?,
                DatasetName::Fmnist => load_fmnist(dir, split)?,
                DatasetName::Svhn => load_svhn(dir, split, limit)?,
                DatasetName::Synthetic => unreachable!("handled above"),
            }
        }
    };
    let mut set = set;
    if let Some(l) = limit {
        if l > set.len() {
            warnings.push(format!(
                "{name} {split}: --limit {l} is more than the {} images available; using all of them",
                set.len()
            ));
        }
        set.truncate(l);
    }
    Ok(Loaded { set, warnings })
}

/// Path of CIFAR-10's batch directory under `dir`.
pub fn cifar_dir(dir: &Path) -> PathBuf {
    dir.join("cifar-10-batches-bin")
}

fn load_cifar(
    dir: &Path,
    split: Split,
    limit: Option<usize>,
    warnings: &mut Vec<String>,
) -> Result<ImageSet, DataError> {
    let base = cifar_dir(dir);
    let files: Vec<PathBuf> = match split {
        Split::Train => (1..=5)
            .map(|i| base.join(format!("data_batch_{i}.bin")))
            .collect(),
        Split::Test => vec![base.join("test_batch.bin")],
    };
    let present: Vec<&PathBuf> = files.iter().filter(|p| p.is_file()).collect();
    if present.is_empty() {
        return Err(not_found(files[0].clone(), DatasetName::Cifar10));
    }
    if present.len() < files.len() {
        let missing: Vec<String> = files
            .iter()
            .filter(|p| !p.is_file())
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        warnings.push(format!(
            "CIFAR-10 train: only {} of 5 batch files found in {} (missing: {}); using a partial training set",
            present.len(),
            base.display(),
            missing.join(", ")
        ));
    }
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for p in present {
        let left = limit.map(|l| l.saturating_sub(labels.len()));
        if left == Some(0) {
            break;
        }
        let (im, lb) = cifar::read_batch(p, left)?;
        images.extend_from_slice(&im);
        labels.extend_from_slice(&lb);
    }
    Ok(ImageSet {
        channels: 3,
        height: 32,
        width: 32,
        images,
        labels,
        num_classes: 10,
    })
}

/// Directory of the Fashion-MNIST files under `dir`.
pub fn fmnist_dir(dir: &Path) -> PathBuf {
    dir.join("fashion-mnist")
}

fn find_idx(dir: &Path, stem: &str) -> Result<PathBuf, DataError> {
    let gz = dir.join(format!("{stem}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    let plain = dir.join(stem);
    if plain.is_file() {
        return Ok(plain);
    }
    Err(not_found(gz, DatasetName::Fmnist))
}

fn load_fmnist(dir: &Path, split: Split) -> Result<ImageSet, DataError> {
    let base = fmnist_dir(dir);
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let ipath = find_idx(&base, &format!("{prefix}-images-idx3-ubyte"))?;
    let lpath = find_idx(&base, &format!("{prefix}-labels-idx1-ubyte"))?;
    let images = idx::read_idx_file(&ipath, 3)?;
    if images.dims[1..] != [28, 28] {
        return Err(DataError::format(
            &ipath,
            FormatProblem::WrongDims,
            format!(
                "images are {}x{}, Fashion-MNIST's are 28x28",
                images.dims[1], images.dims[2]
            ),
        ));
    }
    let labels = idx::read_idx_file(&lpath, 1)?;
    if labels.dims[0] != images.dims[0] {
        return Err(DataError::format(
            &lpath,
            FormatProblem::CountMismatch,
            format!(
                "{} labels but {} has {} images",
                labels.dims[0],
                ipath.display(),
                images.dims[0]
            ),
        ));
    }
    if let Some((i, &l)) = labels.data.iter().enumerate().find(|(_, &l)| l >= 10) {
        return Err(DataError::format(
            &lpath,
            FormatProblem::LabelOutOfRange,
            format!("label {i} is {l} (classes are 0..=9)"),
        ));
    }
    Ok(ImageSet {
        channels: 1,
        height: 28,
        width: 28,
        images: images.data,
        labels: labels.data,
        num_classes: 10,
    })
}

/// Path of an SVHN split's `.mat` file under `dir`.
pub fn svhn_path(dir: &Path, split: Split) -> PathBuf {
    dir.join("svhn").join(match split {
        Split::Train => "train_32x32.mat",
        Split::Test => "test_32x32.mat",
    })
}

fn load_svhn(dir: &Path, split: Split, limit: Option<usize>) -> Result<ImageSet, DataError> {
    let path = svhn_path(dir, split);
    if !path.is_file() {
        return Err(not_found(path, DatasetName::Svhn));
    }
    let vars = mat::read_mat_file(&path, &["X", "y"])?;
    svhn_from_vars(&vars, &path, limit)
}

/// Builds the SVHN set from the `X` (32x32x3xN) and `y` (N labels, 10 meaning 0) variables.
pub fn svhn_from_vars(
    vars: &[mat::MatArray],
    path: &Path,
    limit: Option<usize>,
) -> Result<ImageSet, DataError> {
    let get = |n: &str| vars.iter().find(|a| a.name == n);
    let (Some(x), Some(y)) = (get("X"), get("y")) else {
        return Err(DataError::format(
            path,
            FormatProblem::CountMismatch,
            "the file must hold the variables X and y",
        ));
    };
    if x.dims.len() != 4 || x.dims[..3] != [32, 32, 3] {
        return Err(DataError::format(
            path,
            FormatProblem::WrongDims,
            format!("X has dimensions {:?}, expected [32, 32, 3, N]", x.dims),
        ));
    }
    let n = x.dims[3];
    let yn = y.numel();
    if yn != n || !(y.dims.len() == 2 && y.dims.contains(&1) || y.dims.len() == 1) {
        return Err(DataError::format(
            path,
            FormatProblem::CountMismatch,
            format!("X holds {n} images but y has dimensions {:?}", y.dims),
        ));
    }
    let take = limit.map_or(n, |l| l.min(n));
    let mut labels = Vec::with_capacity(take);
    for i in 0..n {
        let v = y.get_f64(i);
        if !(1.0..=10.0).contains(&v) || v.fract() != 0.0 {
            return Err(DataError::format(
                path,
                FormatProblem::LabelOutOfRange,
                format!(
                    "y({}) is {v} (SVHN labels are 1..=10, 10 meaning digit 0)",
                    i + 1
                ),
            ));
        }
        if i < take {
            labels.push((v as u8) % 10);
        }
    }
    // X is column-major: element (row r, col c, channel ch, image k) is at
    // r + 32*c + 1024*ch + 3072*k. Output is planar CHW, row-major planes.
    let xs: std::borrow::Cow<'_, [u8]> = if x.storage == mat::mi::UINT8 {
        std::borrow::Cow::Borrowed(&x.bytes[..take * 3072])
    } else {
        let all = x.to_u8(path)?;
        std::borrow::Cow::Owned(all[..take * 3072].to_vec())
    };
    let mut images = vec![0u8; take * 3072];
    for (src, dst) in xs.chunks_exact(3072).zip(images.chunks_exact_mut(3072)) {
        for ch in 0..3 {
            let s = &src[ch * 1024..(ch + 1) * 1024];
            let d = &mut dst[ch * 1024..(ch + 1) * 1024];
            for c in 0..32 {
                for r in 0..32 {
                    d[r * 32 + c] = s[c * 32 + r];
                }
            }
        }
    }
    Ok(ImageSet {
        channels: 3,
        height: 32,
        width: 32,
        images,
        labels,
        num_classes: 10,
    })
}

/// Per-channel normalisation for pixels scaled to 0..=1: `(x/255 - mean[c]) / std[c]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// The usual per-channel constants of each dataset (training-set statistics):
/// CIFAR-10 mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616);
/// SVHN mean (0.4377, 0.4438, 0.4728), std (0.1980, 0.2010, 0.1970);
/// Fashion-MNIST mean 0.2860, std 0.3530.
/// `synthetic` is computed: the statistics of 256 synthetic training images (seed 0) of
/// `channels x 32 x 32`. When `channels` differs from a real dataset's, the channel means and
/// stds are averaged and repeated.
pub fn normalization(name: DatasetName, channels: usize) -> Normalization {
    let (mean, std): (Vec<f32>, Vec<f32>) = match name {
        DatasetName::Cifar10 => (vec![0.4914, 0.4822, 0.4465], vec![0.2470, 0.2435, 0.2616]),
        DatasetName::Svhn => (vec![0.4377, 0.4438, 0.4728], vec![0.1980, 0.2010, 0.1970]),
        DatasetName::Fmnist => (vec![0.2860], vec![0.3530]),
        DatasetName::Synthetic => return synthetic_normalization(channels),
    };
    if mean.len() == channels {
        return Normalization { mean, std };
    }
    let avg = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    Normalization {
        mean: vec![avg(&mean); channels],
        std: vec![avg(&std); channels],
    }
}

fn synthetic_normalization(channels: usize) -> Normalization {
    let c = channels.max(1);
    let set = synthetic((c, 32, 32), 256, 0, Split::Train);
    let plane = 32 * 32;
    let mut sum = vec![0f64; c];
    let mut sq = vec![0f64; c];
    for i in 0..set.len() {
        for (ch, p) in set.image(i).chunks_exact(plane).enumerate() {
            for &v in p {
                let x = v as f64 / 255.0;
                sum[ch] += x;
                sq[ch] += x * x;
            }
        }
    }
    let cnt = (set.len() * plane) as f64;
    let mean: Vec<f32> = sum.iter().map(|s| (s / cnt) as f32).collect();
    let std: Vec<f32> = sq
        .iter()
        .zip(&sum)
        .map(|(q, s)| {
            let m = s / cnt;
            ((q / cnt - m * m).max(1e-12).sqrt()) as f32
        })
        .collect();
    Normalization {
        mean: mean[..channels].to_vec(),
        std: std[..channels].to_vec(),
    }
}

/// Normalises one planar CHW `u8` image into `out` (same length) with `norm`'s per-channel
/// constants. Panics if the lengths disagree with `norm`'s channel count (a programming error).
pub fn normalize_image(img: &[u8], norm: &Normalization, out: &mut [f32]) {
    let c = norm.mean.len();
    assert!(
        c > 0 && norm.std.len() == c,
        "normalization has no channels or mismatched mean/std"
    );
    assert_eq!(img.len(), out.len(), "input and output lengths differ");
    assert_eq!(
        img.len() % c,
        0,
        "image length is not a multiple of the channel count"
    );
    let plane = img.len() / c;
    if plane == 0 {
        return;
    }
    for (ch, (src, dst)) in img
        .chunks_exact(plane)
        .zip(out.chunks_exact_mut(plane))
        .enumerate()
    {
        let scale = 1.0 / (255.0 * norm.std[ch]);
        let shift = norm.mean[ch] / norm.std[ch];
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s as f32 * scale - shift;
        }
    }
}
