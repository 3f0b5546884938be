//! Which Burn device runs the network. `flex` (CPU) is always built; the GPU backends
//! (`wgpu`, `cuda`) and LibTorch (`tch`) need the cargo features of the same names.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::NnError;

/// A Burn backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Burn's `flex` CPU backend (fastest CPU backend measured here).
    #[default]
    Flex,
    /// WebGPU/Vulkan/Metal through wgpu (feature `wgpu`).
    Wgpu,
    /// CUDA (feature `cuda`).
    Cuda,
    /// LibTorch through tch (feature `tch`; needs a matching LibTorch install).
    Tch,
}

impl BackendKind {
    pub const ALL: [BackendKind; 4] = [
        BackendKind::Flex,
        BackendKind::Wgpu,
        BackendKind::Cuda,
        BackendKind::Tch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Flex => "flex",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
            BackendKind::Tch => "tch",
        }
    }

    /// Whether this build includes the backend.
    pub fn available(self) -> bool {
        match self {
            BackendKind::Flex => true,
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
            BackendKind::Cuda => cfg!(feature = "cuda"),
            BackendKind::Tch => cfg!(feature = "tch"),
        }
    }

    /// The inference device of this backend (no autodiff).
    pub fn device(self) -> Result<Device, NnError> {
        if !self.available() {
            return Err(NnError::Invalid(format!(
                "backend '{}' is not in this build: rebuild with `--features {}`",
                self.name(),
                self.name()
            )));
        }
        Ok(match self {
            BackendKind::Flex => Device::flex(),
            #[cfg(feature = "wgpu")]
            BackendKind::Wgpu => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => Device::cuda(0),
            #[cfg(feature = "tch")]
            BackendKind::Tch => Device::libtorch(),
            #[allow(unreachable_patterns)]
            _ => unreachable!("availability checked above"),
        })
    }

    /// The training device of this backend (autodiff).
    pub fn train_device(self) -> Result<Device, NnError> {
        Ok(self.device()?.autodiff())
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = NnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BackendKind::ALL
            .into_iter()
            .find(|b| b.name() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                NnError::Invalid(format!(
                    "unknown backend '{s}': expected flex, wgpu, cuda or tch"
                ))
            })
    }
}
