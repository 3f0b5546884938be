//! The paper's published numbers (Tables 5-9), embedded from `data/paper.json`.
//!
//! Every row names the table it comes from, the dataset, the paper's method label and the
//! preset of ours that reproduces it (`None` for other frameworks in Table 9).

use crate::AnalysisError;
use serde::{Deserialize, Serialize};

/// The raw JSON file (kept in the repository, compiled in).
pub const PAPER_JSON: &str = include_str!("../data/paper.json");

/// One row of one of the paper's tables; fields not in that table are `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaperRow {
    pub table: String,
    pub dataset: String,
    pub method: String,
    pub preset: Option<String>,
    #[serde(default)]
    pub patch: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub layer1: Option<String>,
    #[serde(default)]
    pub layer2: Option<String>,
    #[serde(default)]
    pub relus_label: Option<String>,
    #[serde(default)]
    pub relus_per_channel: Option<Vec<u64>>,
    #[serde(default)]
    pub relus_total_per_channel: Option<u64>,
    #[serde(default)]
    pub noise_pct: Option<f64>,
    pub accuracy: f64,
    #[serde(default)]
    pub runtime_s: Option<f64>,
    #[serde(default)]
    pub rounds: Option<u64>,
    #[serde(default)]
    pub comm_mb: Option<f64>,
    #[serde(default)]
    pub setup_s: Option<f64>,
    #[serde(default)]
    pub online_s: Option<f64>,
    #[serde(default)]
    pub total_s: Option<f64>,
    #[serde(default)]
    pub setup_mb: Option<f64>,
    #[serde(default)]
    pub online_mb: Option<f64>,
    #[serde(default)]
    pub total_mb: Option<f64>,
}

/// A reference point of another framework (not the paper's): its bytes and rounds for one
/// CIFAR-10 image of the `original` network, measured on this kind of machine without latency
/// (from the project's shared notes; their numbers, not our measurement).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PeerPoint {
    pub name: &'static str,
    pub mb: f64,
    pub rounds: u64,
}

/// The reference points that BENCHMARKS.md models over LAN and WAN beside our measurements.
pub const PEER_POINTS: &[PeerPoint] = &[
    PeerPoint {
        name: "replicated-ring 3PC framework",
        mb: 27.6,
        rounds: 2864,
    },
    PeerPoint {
        name: "2PC framework with a dealer",
        mb: 107.0,
        rounds: 72,
    },
];

/// A per-layer cost statement from the paper's text around Table 8.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextClaim {
    pub table: String,
    pub dataset: String,
    pub preset: String,
    pub claim: String,
    pub runtime_s: f64,
    pub comm_mb: f64,
}

/// All of the paper's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaperNumbers {
    pub source: String,
    pub rows: Vec<PaperRow>,
    pub text_claims: Vec<TextClaim>,
}

impl PaperNumbers {
    /// Parses the embedded file.
    pub fn load() -> Result<Self, AnalysisError> {
        serde_json::from_str(PAPER_JSON)
            .map_err(|e| AnalysisError::Invalid(format!("paper.json: {e}")))
    }

    /// Rows of one table ("5" .. "9").
    pub fn table(&self, table: &str) -> Vec<&PaperRow> {
        self.rows.iter().filter(|r| r.table == table).collect()
    }

    /// The row of `table` for `dataset` reproduced by `preset`.
    pub fn find(&self, table: &str, dataset: &str, preset: &str) -> Option<&PaperRow> {
        self.rows.iter().find(|r| {
            r.table == table && r.dataset == dataset && r.preset.as_deref() == Some(preset)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_table() {
        let p = PaperNumbers::load().unwrap();
        assert_eq!(p.table("5").len(), 8);
        assert_eq!(p.table("6").len(), 11);
        assert_eq!(p.table("7").len(), 2);
        assert_eq!(p.table("8").len(), 7);
        assert_eq!(p.table("9").len(), 6);
        assert_eq!(p.find("5", "cifar10", "fc-noise").unwrap().accuracy, 82.01);
        assert_eq!(
            p.find("8", "cifar10", "original").unwrap().comm_mb,
            Some(141.02)
        );
        assert_eq!(
            p.find("6", "svhn", "adaptive256")
                .unwrap()
                .relus_per_channel,
            Some(vec![256])
        );
        // Table 8 accuracies repeat Tables 5 and 6
        for r in p.table("8") {
            let t = if r.dataset == "cifar10" { "5" } else { "6" };
            let src = p.find(t, &r.dataset, r.preset.as_deref().unwrap()).unwrap();
            assert_eq!(src.accuracy, r.accuracy, "{} {}", r.dataset, r.method);
        }
    }
}
