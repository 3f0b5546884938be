//! Protocol selection: `securenn` (the paper's SecureNN baseline), `fast` (dealer-assisted
//! suite with small-ring comparisons), `fss` (the fast suite with function-secret-sharing
//! comparisons) and `mimo` (masked-in/masked-out FSS gates: one online round per layer), each
//! turned into a runner factory for a given model.

use crate::error::{MpcError, Result};
use crate::plain::FixedModel;
use crate::runner::SuiteFactory;
use std::fmt;
use std::str::FromStr;

/// A protocol suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// SecureNN as in PySyft (the paper's numbers).
    Securenn,
    /// Our fast suite (offline dealer + online openings).
    Fast,
    /// The fast suite with FSS comparisons (one online round per comparison).
    Fss,
    /// Masked-in/masked-out FSS gates (one online round per layer, [`crate::mimo`]).
    Mimo,
}

impl Protocol {
    /// All protocols.
    pub const ALL: [Protocol; 4] = [
        Protocol::Securenn,
        Protocol::Fast,
        Protocol::Fss,
        Protocol::Mimo,
    ];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Securenn => "securenn",
            Protocol::Fast => "fast",
            Protocol::Fss => "fss",
            Protocol::Mimo => "mimo",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Protocol {
    type Err = MpcError;
    fn from_str(s: &str) -> Result<Protocol> {
        match s.to_ascii_lowercase().as_str() {
            "securenn" => Ok(Protocol::Securenn),
            "fast" => Ok(Protocol::Fast),
            "fss" => Ok(Protocol::Fss),
            "mimo" => Ok(Protocol::Mimo),
            _ => Err(MpcError::Param(format!(
                "unknown protocol '{s}' (expected securenn, fast, fss or mimo)"
            ))),
        }
    }
}

/// Adapt the fixed-point model to `protocol`, before running it and before computing the
/// plaintext reference it is compared with: the fast suites fuse whole-channel gates with the
/// convolution before them ([`crate::fast::gate::fuse`]; the model owner computes the folded
/// deciders; `mimo` fuses learned whole-channel gates in Fold mode, [`crate::mimo::fuse`]).
/// Returns the fused layers' names.
pub fn prepare_model(protocol: Protocol, fm: &mut FixedModel) -> Result<Vec<String>> {
    match protocol {
        Protocol::Securenn => Ok(Vec::new()),
        Protocol::Mimo => crate::mimo::fuse(fm),
        Protocol::Fast | Protocol::Fss => crate::fast::gate::fuse(fm),
    }
}

/// The runner factory of `protocol` for `model` (encoded as `fm`). The fast suites size their
/// comparison rings from the model's plaintext weights (computed by the model owner).
pub fn factory_for(
    protocol: Protocol,
    fm: &FixedModel,
    model: &relushare_model::Model,
) -> Result<Box<SuiteFactory<'static>>> {
    Ok(match protocol {
        Protocol::Securenn => Box::new(crate::securenn::factory),
        Protocol::Fast | Protocol::Fss => {
            let mode = if protocol == Protocol::Fast {
                crate::fast::CmpMode::Tree
            } else {
                crate::fast::CmpMode::Fss
            };
            let cfg = crate::fast::config_for_mode(fm, model, mode)?;
            Box::new(crate::fast::factory(cfg, mode))
        }
        Protocol::Mimo => {
            let cfg = crate::mimo::config_for_model(fm, model)?;
            Box::new(crate::mimo::factory(cfg))
        }
    })
}

/// Refuses an encoded (normalized, `frac_bits`) input outside the range `protocol` was proven
/// for. The fast suites' comparison rings and truncation bounds ([`crate::fast::bounds`]) are
/// derived for normalized values of magnitude at most [`crate::fast::input_abs_max`] of the
/// model's normalization (pixels in `[0, 1]`): a larger value is refused with an error naming
/// it, never clamped or run. SecureNN has no per-model range (its DReLU is exact below 2^62).
pub fn check_input(
    protocol: Protocol,
    norm: &relushare_model::Normalization,
    frac_bits: u32,
    x: &[u64],
) -> Result<()> {
    match protocol {
        Protocol::Securenn => Ok(()),
        Protocol::Fast | Protocol::Fss | Protocol::Mimo => {
            crate::fast::bounds::check_input(x, crate::fast::input_abs_max(norm), frac_bits)
        }
    }
}
