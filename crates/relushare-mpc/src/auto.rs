//! `--protocol auto`: the suite for a network and a job, chosen by a cost model.
//!
//! # The model
//! For every suite on offer ([`Protocol::ALL`]), one image of the model is run in process
//! ([`probe`]): that gives the suite's own counts of **bytes** and **rounds** per phase (the
//! counters every message goes through; the suites' tests assert that they equal the suites'
//! cost formulas) and its **compute** seconds per phase on this machine. For a network with
//! round trip `RTT` and bandwidth `bw` (per direction), a phase of a batch of `b` images takes
//!
//! ```text
//! T(b) = b x compute + rounds x RTT / 2 + b x bytes / bw
//! ```
//!
//! (bytes of all parties; rounds do not grow with the batch). A round costs one one-way delay:
//! the suites count a round per communication step in which the parties send at once and then
//! wait for what they need; this is the "RTT/2 per round" column of `relushare bench
//! --network`, the closer of the two models to the measured `fast`/`fss` rows. Nothing in it
//! names a suite: a new suite in [`Protocol::ALL`] (e.g. a round-optimal one) is measured and
//! modelled the same way.
//!
//! # The job
//! * [`Job::Image`], objective [`Objective::Total`] (default): one image, its dealer material
//!   produced for it: `T_off(1) + T_on(1)`.
//! * [`Job::Image`], objective [`Objective::Online`]: one image whose material was produced
//!   ahead (a pipelined or idle dealer): `T_on(1)`.
//! * [`Job::Stream`] of `N` images in batches of `b` with the offline work pipelined
//!   ([`crate::pipeline`]): the first batch pays both phases, every further one the slower of
//!   the two (they overlap): `T_off(b) + T_on(b) + (k - 1) x max(T_on(b), T_off(b))` for `k`
//!   batches (a suite without offline material: `k x T_on(b)`). The objective is the stream's
//!   time (images per second).
//!
//! The suite with the smallest predicted time wins; the [`Choice`] lists every candidate's
//! figures and says why.

use crate::error::{MpcError, Result};
use crate::plain::FixedModel;
use crate::protocol::{factory_for, prepare_model, Protocol};
use crate::runner::{run_session, RunOptions};
use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// A protocol option: a suite, or `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolArg {
    /// Choose by the cost model.
    Auto,
    /// This suite.
    Fixed(Protocol),
}

impl FromStr for ProtocolArg {
    type Err = MpcError;
    fn from_str(s: &str) -> Result<ProtocolArg> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(ProtocolArg::Auto);
        }
        s.parse()
            .map(ProtocolArg::Fixed)
            .map_err(|e| MpcError::Param(format!("{e}, or auto")))
    }
}

impl fmt::Display for ProtocolArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolArg::Auto => f.write_str("auto"),
            ProtocolArg::Fixed(p) => p.fmt(f),
        }
    }
}

/// What is being run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Job {
    /// One image.
    Image,
    /// A pipelined stream of `images` in batches of `batch`.
    Stream { images: usize, batch: usize },
}

/// What the choice minimises for one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Offline and online phase of the image.
    Total,
    /// The online phase only (material produced ahead).
    Online,
}

impl FromStr for Objective {
    type Err = MpcError;
    fn from_str(s: &str) -> Result<Objective> {
        match s.to_ascii_lowercase().as_str() {
            "total" => Ok(Objective::Total),
            "online" => Ok(Objective::Online),
            _ => Err(MpcError::Param(format!(
                "unknown objective '{s}' (expected total or online)"
            ))),
        }
    }
}

/// The network as the model sees it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Link {
    /// Round-trip time, milliseconds.
    pub rtt_ms: f64,
    /// Bandwidth per direction, Mbit/s (`None`: unlimited).
    pub mbit: Option<f64>,
}

impl Link {
    /// Seconds of `rounds` steps and `bytes` over this link.
    pub fn seconds(&self, rounds: u64, bytes: f64) -> f64 {
        rounds as f64 * self.rtt_ms / 2000.0 + self.mbit.map_or(0.0, |m| bytes * 8.0 / (m * 1e6))
    }
}

/// One suite's measured costs of one image (in process).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Measured {
    pub protocol: Protocol,
    /// Bytes of all parties per image.
    pub online_bytes: f64,
    pub offline_bytes: f64,
    /// Rounds of a batch.
    pub online_rounds: u64,
    pub offline_rounds: u64,
    /// Compute seconds per image (three parties in process, no network).
    pub online_compute: f64,
    pub offline_compute: f64,
}

/// One candidate's predicted figures.
#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    #[serde(flatten)]
    pub measured: Measured,
    /// Per batch of the job (1 for an image): predicted phase seconds.
    pub online_seconds: f64,
    pub offline_seconds: f64,
    /// The predicted time of the job under the objective (what is minimised).
    pub job_seconds: f64,
    /// Images per second the job would run at.
    pub images_per_second: f64,
}

/// The choice with its reasons.
#[derive(Clone, Debug, Serialize)]
pub struct Choice {
    pub chosen: Protocol,
    pub job: Job,
    pub objective: String,
    pub network: Link,
    /// In words.
    pub reason: String,
    /// Every candidate, best first.
    pub candidates: Vec<Prediction>,
    /// Suites that could not run this model, with the reason.
    pub unavailable: Vec<(String, String)>,
}

/// Predicts `m` for `job` over `link`.
pub fn predict(m: &Measured, link: &Link, job: Job, objective: Objective) -> Prediction {
    let (b, k, n) = match job {
        Job::Image => (1usize, 1usize, 1usize),
        Job::Stream { images, batch } => {
            let b = batch.clamp(1, images.max(1));
            (b, images.max(1).div_ceil(b), images.max(1))
        }
    };
    let bf = b as f64;
    let on = bf * m.online_compute + link.seconds(m.online_rounds, bf * m.online_bytes);
    let off = bf * m.offline_compute + link.seconds(m.offline_rounds, bf * m.offline_bytes);
    let job_seconds = match job {
        Job::Image => match objective {
            Objective::Total => on + off,
            Objective::Online => on,
        },
        Job::Stream { .. } => {
            let pipelined = m.offline_bytes > 0.0 || m.offline_rounds > 0;
            if pipelined {
                off + on + (k - 1) as f64 * on.max(off)
            } else {
                k as f64 * (on + off)
            }
        }
    };
    Prediction {
        measured: m.clone(),
        online_seconds: on,
        offline_seconds: off,
        job_seconds,
        images_per_second: if job_seconds > 0.0 {
            n as f64 / job_seconds
        } else {
            f64::INFINITY
        },
    }
}

/// Chooses among `measured` (at least one) the suite the model predicts fastest for `job`.
pub fn choose(
    measured: &[Measured],
    link: Link,
    job: Job,
    objective: Objective,
    unavailable: Vec<(String, String)>,
) -> Result<Choice> {
    let mut c: Vec<Prediction> = measured
        .iter()
        .map(|m| predict(m, &link, job, objective))
        .collect();
    c.sort_by(|a, b| a.job_seconds.total_cmp(&b.job_seconds));
    let best = c
        .first()
        .ok_or_else(|| MpcError::Param("no suite can run this model".into()))?;
    let objective_name = match (job, objective) {
        (Job::Stream { .. }, _) => "stream time (pipelined)".to_string(),
        (Job::Image, Objective::Total) => "one image, offline + online".to_string(),
        (Job::Image, Objective::Online) => "one image, online (material ready)".to_string(),
    };
    let others: Vec<String> = c
        .iter()
        .skip(1)
        .map(|p| format!("{} {:.3} s", p.measured.protocol, p.job_seconds))
        .collect();
    let reason = format!(
        "{} is predicted fastest for the {objective_name} over {} ms RTT and {}: {:.3} s \
         (online {:.3} s: {:.0} ms compute + {} rounds x RTT/2 + {:.2} MB; offline {:.3} s per batch: {:.2} MB), against {}",
        best.measured.protocol,
        link.rtt_ms,
        link.mbit
            .map_or("unlimited bandwidth".to_string(), |m| format!("{m} Mbit/s")),
        best.job_seconds,
        best.online_seconds,
        best.measured.online_compute * 1000.0,
        best.measured.online_rounds,
        best.measured.online_bytes / 1e6,
        best.offline_seconds,
        best.measured.offline_bytes / 1e6,
        if others.is_empty() {
            "no other suite".to_string()
        } else {
            others.join(", ")
        }
    );
    Ok(Choice {
        chosen: best.measured.protocol,
        job,
        objective: objective_name,
        network: link,
        reason,
        candidates: c,
        unavailable,
    })
}

/// Measures `protocol` on `fm` (the model before any suite's preparation) with one encoded
/// image `x`, in process.
pub fn probe(
    model: &relushare_model::Model,
    fm: &FixedModel,
    x: &[u64],
    protocol: Protocol,
) -> Result<Measured> {
    let mut fm = fm.clone();
    prepare_model(protocol, &mut fm)?;
    let f = factory_for(protocol, &fm, model)?;
    let s = run_session(&fm, &[vec![x.to_vec()]], f.as_ref(), &RunOptions::default())?;
    let b = s
        .batches
        .first()
        .ok_or_else(|| MpcError::Param("the probe ran no batch".into()))?;
    Ok(Measured {
        protocol,
        online_bytes: b.report.online_bytes() as f64,
        offline_bytes: b.report.offline_bytes() as f64,
        online_rounds: b.report.online_rounds(),
        offline_rounds: b.report.offline_rounds(),
        online_compute: b.online_seconds,
        offline_compute: b.offline_seconds,
    })
}

/// [`probe`]s every suite in [`Protocol::ALL`] on `x` and [`choose`]s; a suite that cannot run
/// the model (e.g. a layer it does not support) is listed as unavailable, not chosen.
pub fn choose_for_model(
    model: &relushare_model::Model,
    fm: &FixedModel,
    x: &[u64],
    link: Link,
    job: Job,
    objective: Objective,
) -> Result<Choice> {
    let mut measured = Vec::new();
    let mut unavailable = Vec::new();
    for p in Protocol::ALL {
        match probe(model, fm, x, p) {
            Ok(m) => measured.push(m),
            Err(e) => unavailable.push((p.name().to_string(), e.to_string())),
        }
    }
    choose(&measured, link, job, objective, unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: Protocol, on_b: f64, off_b: f64, on_r: u64, off_r: u64, c: f64) -> Measured {
        Measured {
            protocol: p,
            online_bytes: on_b,
            offline_bytes: off_b,
            online_rounds: on_r,
            offline_rounds: off_r,
            online_compute: c,
            offline_compute: c / 2.0,
        }
    }

    /// Three synthetic suites: many rounds and few bytes (A), few rounds and a lot of dealer
    /// material (B), no offline phase and many bytes (C).
    fn suites() -> Vec<Measured> {
        vec![
            m(Protocol::Fast, 6e6, 5e6, 53, 20, 0.03),
            m(Protocol::Fss, 4e6, 135e6, 22, 20, 0.05),
            m(Protocol::Securenn, 141e6, 0.0, 86, 0, 0.5),
        ]
    }

    /// On every synthetic profile and job the chosen suite is the one with the smallest
    /// predicted time, and the extremes go where the model says: long round trips favour few
    /// rounds (online), thin links few bytes, streams the suite whose slower phase is shortest.
    #[test]
    fn auto_picks_the_model_predicted_winner() {
        let s = suites();
        for rtt in [0.0, 0.3, 5.0, 40.0, 200.0] {
            for mbit in [Some(10.0), Some(400.0), Some(3000.0), None] {
                let link = Link { rtt_ms: rtt, mbit };
                for job in [
                    Job::Image,
                    Job::Stream {
                        images: 32,
                        batch: 8,
                    },
                ] {
                    for obj in [Objective::Total, Objective::Online] {
                        let c = choose(&s, link, job, obj, vec![]).unwrap();
                        let best = s
                            .iter()
                            .map(|m| (m.protocol, predict(m, &link, job, obj).job_seconds))
                            .min_by(|a, b| a.1.total_cmp(&b.1))
                            .unwrap();
                        assert_eq!(c.chosen, best.0, "{link:?} {job:?} {obj:?}");
                        assert!(c.reason.starts_with(c.chosen.name()));
                        assert_eq!(c.candidates.len(), 3);
                    }
                }
            }
        }
        let wan = Link {
            rtt_ms: 40.0,
            mbit: Some(400.0),
        };
        // One image with its material ready: fewest rounds wins over a long RTT.
        let c = choose(&s, wan, Job::Image, Objective::Online, vec![]).unwrap();
        assert_eq!(c.chosen, Protocol::Fss);
        // The same image paying for its 135 MB of keys: the small-material suite.
        let c = choose(&s, wan, Job::Image, Objective::Total, vec![]).unwrap();
        assert_eq!(c.chosen, Protocol::Fast);
        // A stream: the dealer link limits the large-key suite.
        let st = Job::Stream {
            images: 32,
            batch: 8,
        };
        let c = choose(&s, wan, st, Objective::Total, vec![]).unwrap();
        assert_eq!(c.chosen, Protocol::Fast);
        assert!(c.candidates[0].images_per_second > c.candidates[1].images_per_second);
        // No network: compute alone.
        let none = Link {
            rtt_ms: 0.0,
            mbit: None,
        };
        let c = choose(&s, none, Job::Image, Objective::Online, vec![]).unwrap();
        assert_eq!(c.chosen, Protocol::Fast);
    }

    #[test]
    fn stream_prediction_overlaps_the_phases() {
        let a = m(Protocol::Fast, 1e6, 2e6, 10, 5, 0.0);
        let link = Link {
            rtt_ms: 20.0,
            mbit: Some(8.0),
        };
        let one = predict(&a, &link, Job::Image, Objective::Total);
        // 1 MB at 1 MB/s + 10 x 10 ms; 2 MB + 5 x 10 ms.
        assert!((one.online_seconds - 1.1).abs() < 1e-9);
        assert!((one.offline_seconds - 2.05).abs() < 1e-9);
        let st = predict(
            &a,
            &link,
            Job::Stream {
                images: 4,
                batch: 1,
            },
            Objective::Total,
        );
        assert!((st.job_seconds - (3.15 + 3.0 * 2.05)).abs() < 1e-9);
        assert!("auto".parse::<ProtocolArg>().unwrap() == ProtocolArg::Auto);
        assert!("fss".parse::<ProtocolArg>().unwrap() == ProtocolArg::Fixed(Protocol::Fss));
        assert!("nope".parse::<ProtocolArg>().is_err());
    }

    /// The probe measures the real suites: on a small model every suite runs, the costs are the
    /// suites' own, and a WAN stream goes to the small-material suite.
    #[test]
    fn probe_measures_every_suite() {
        use relushare_model::{presets, Arch, Model};
        let model =
            Model::random(presets::build(Arch::Fmnist, "original").unwrap(), None, 3).unwrap();
        let fm = FixedModel::from_model(&model, 13).unwrap();
        let x = fm.encode_input(&vec![0.25; fm.input_len]).unwrap();
        let link = Link {
            rtt_ms: 40.0,
            mbit: Some(400.0),
        };
        let c = choose_for_model(&model, &fm, &x, link, Job::Image, Objective::Total).unwrap();
        assert!(c.unavailable.is_empty(), "{:?}", c.unavailable);
        assert_eq!(c.candidates.len(), Protocol::ALL.len());
        let get = |p: Protocol| {
            c.candidates
                .iter()
                .find(|x| x.measured.protocol == p)
                .unwrap()
                .measured
                .clone()
        };
        assert_eq!(get(Protocol::Securenn).offline_bytes, 0.0);
        assert!(get(Protocol::Fss).offline_bytes > get(Protocol::Fast).offline_bytes);
        assert!(get(Protocol::Fss).online_rounds < get(Protocol::Fast).online_rounds);
    }
}
