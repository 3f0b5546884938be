//! `--image FILE` (PNG, JPEG, PPM/PGM) and `--center-crop`, shared by `infer`, `party` and
//! `classify`, and the printing of classes with their names. Decoding, resizing and class names
//! live in `relushare_data::image`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use relushare_data::image::{class_name, Decoded, Fit};
use relushare_mpc::net::session::PixelLoader;
use serde::Serialize;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ImageArgs {
    /// Image file to classify (PNG, JPEG, PPM/PGM); repeat for several. Converted to the model's
    /// channels, resized to its input (triangle filter) and normalized as in training.
    #[arg(long = "image", value_name = "FILE")]
    pub image: Vec<PathBuf>,
    /// Cut the largest centred region with the model's aspect ratio before resizing (default:
    /// resize the whole image).
    #[arg(long)]
    pub center_crop: bool,
}

impl ImageArgs {
    pub fn fit(&self) -> Fit {
        if self.center_crop {
            Fit::CenterCrop
        } else {
            Fit::Stretch
        }
    }

    /// Decodes every file now (so an unreadable one fails before anything else happens).
    pub fn decode(&self) -> Result<Vec<Decoded>> {
        self.image
            .iter()
            .map(|p| Decoded::open(p).map_err(anyhow::Error::from))
            .collect()
    }

    /// CHW pixels of every image for a model with input `dims`.
    pub fn pixels(&self, dims: (usize, usize, usize)) -> Result<Vec<Vec<u8>>> {
        let fit = self.fit();
        self.decode()?
            .iter()
            .map(|d| d.to_input(dims, fit).map_err(anyhow::Error::from))
            .collect()
    }

    /// A loader that brings already decoded images to a model's input once it is known.
    pub fn loader(&self) -> Result<PixelLoader> {
        let decoded = self.decode()?;
        let fit = self.fit();
        Ok(PixelLoader(Arc::new(move |dims| {
            decoded
                .iter()
                .map(|d| d.to_input(dims, fit).map_err(|e| e.to_string()))
                .collect()
        })))
    }
}

/// One classified image as `--json` prints it.
#[derive(Serialize)]
pub struct Classified {
    pub file: Option<String>,
    pub index: usize,
    pub name: String,
    pub logits: Vec<f32>,
}

/// The name of class `index`: the model's own class names where it carries them (`import
/// --classes`), else `arch`'s dataset names, else `class-N`.
pub fn class_label(names: &[String], arch: &str, index: usize) -> String {
    names
        .get(index)
        .cloned()
        .unwrap_or_else(|| class_name(arch, index))
}

/// The classes of `logits`/`classes` with their names ([`class_label`]: `names`, the model's
/// class names when known, then `arch`'s).
pub fn classified(
    arch: &str,
    names: &[String],
    files: &[PathBuf],
    classes: &[usize],
    logits: &[Vec<f32>],
) -> Vec<Classified> {
    classes
        .iter()
        .zip(logits)
        .enumerate()
        .map(|(i, (&c, l))| Classified {
            file: files.get(i).map(|p| p.display().to_string()),
            index: c,
            name: class_label(names, arch, c),
            logits: l.clone(),
        })
        .collect()
}

/// Prints one line per image: `FILE: class NAME (index I)  logits [...]`.
pub fn print_classified(rows: &[Classified]) {
    for (i, r) in rows.iter().enumerate() {
        let l: Vec<String> = r.logits.iter().map(|x| format!("{x:.3}")).collect();
        println!(
            "  {}: {} (class {})  logits [{}]",
            r.file.clone().unwrap_or_else(|| format!("image {i}")),
            r.name,
            r.index,
            l.join(", ")
        );
    }
}

/// The images of `paths` must be readable: context for errors.
pub fn ensure_some(a: &ImageArgs) -> Result<()> {
    (!a.image.is_empty())
        .then_some(())
        .context("give at least one --image FILE")
}
