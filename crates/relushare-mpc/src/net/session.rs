//! One party of a secure inference over the TLS mesh ([`TlsTransport`]): the same suites and the
//! same per-layer schedule as the in-process runner, with the client and the model owner played
//! by parties of the mesh.
//!
//! Messages before the protocol (each tagged by its first byte; anything else is refused):
//! 1. `ANNOUNCE` (everyone to everyone): JSON with the protocol, fractional bits, whether this
//!    party supplies the model and/or the input, and the number of images. All three must agree
//!    on protocol and bits, and exactly one party must supply each of model and input.
//! 2. `MODEL` (owner to the others): the public structure only: the spec (architecture, layer
//!    kinds, sharing layout) and the cluster group maps. No parameter leaves the owner in clear.
//! 3. `WEIGHTS` (owner to P0 and P1): an additive share of every encoded parameter (conv/linear
//!    weights and biases, decider `v` and Fc biases), in layer order; lengths are checked.
//! 4. `INPUT` (client to P0 and P1): an additive share of the encoded images.
//!
//! When the session reuses its owner–helper pair's weight masks ([`run_with`] with a
//! [`MaskReuse`]; serving, `fast`/`fss`/`mimo`), `WEIGHTS` carries the biases only (the client
//! needs no share of a masked tensor), and before the suite starts:
//! * `MASKS` (owner to the helper): the pair's mask-state id, followed by its keys while the
//!   helper does not hold them yet;
//! * `FIXED` (owner to the client): the state id, the seed of the client's masks `B_0` and the
//!   masked weights `F`; the suite installs them instead of opening `F` (see
//!   [`crate::fast::masks`]).
//!
//! 5. `READY` (everyone to everyone, empty) after the suite's one-time model setup: a barrier,
//!    so that all three start the offline phase together and its time is that of the images'
//!    dealer material, not of a slower party's model setup.
//!
//! Then every party runs the suite layer by layer (P2 gets no shares, only geometry), and P0 and
//! P1 send their output shares to the client in an `OUTPUT` message. Shares come from an
//! OS-seeded PRG. The costs reported are those of the suite (as in the in-process runner).

use super::masks::{self, MaskReuse};
use super::{NetError, TlsTransport};
use crate::cost::{Comm, CostReport, PartyCosts, Phase};
use crate::error::{MpcError, Result};
use crate::fast::masks::{FixedMasks, MaskKeys, MASK_KEYS_BYTES};
use crate::fast::{CmpMode, FastConfig, FastSuite};
use crate::fixed::FixedPoint;
use crate::plain::{FixedLayer, FixedModel};
use crate::prg::Prg;
use crate::suite::{GroupShares, Shared, Suite, WeightShare};
use crate::transport::Transport;
use relushare_model::{Model, ModelSpec, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

const TAG_ANNOUNCE: u8 = 1;
const TAG_MODEL: u8 = 2;
const TAG_WEIGHTS: u8 = 3;
const TAG_INPUT: u8 = 4;
const TAG_OUTPUT: u8 = 5;
const TAG_READY: u8 = 6;
const TAG_MASKS: u8 = 7;
const TAG_FIXED: u8 = 8;
/// Version of the session protocol, checked in the announce message: parties of different
/// versions refuse each other by name instead of misreading each other's material (4: `fast`'s
/// comparisons deal and open the 5-way carry tree of `fast::cmp`).
const SESSION_VERSION: u32 = 4;
/// Largest accepted announce message.
const MAX_ANNOUNCE: usize = 4096;
/// Largest accepted model-structure message.
const MAX_MODEL_MSG: usize = 256 << 20;
/// Most images per run.
pub const MAX_IMAGES: usize = 4096;

fn tag_name(t: u8) -> String {
    match t {
        TAG_ANNOUNCE => "announce".into(),
        TAG_MODEL => "model".into(),
        TAG_WEIGHTS => "weights".into(),
        TAG_INPUT => "input".into(),
        TAG_OUTPUT => "output".into(),
        TAG_READY => "ready".into(),
        TAG_MASKS => "weight-mask state".into(),
        TAG_FIXED => "masked weights".into(),
        t => format!("unknown type {t}"),
    }
}

/// Protocol suites available over the network.
pub const PROTOCOLS: &[&str] = &["fast", "fss", "mimo", "securenn"];

/// Settings every party passes (they must agree).
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Protocol suite: "fast", "fss" or "securenn".
    pub protocol: String,
    /// Fixed-point fractional bits.
    pub frac_bits: u32,
}

/// A stream: the images in batches of `batch`, the dealer's material for the next batches
/// produced and sent while the current one is online, at most `depth` batches ahead
/// ([`crate::pipeline`]). All three parties must pass the same settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSettings {
    /// Images per batch (the last batch may be smaller).
    pub batch: usize,
    /// Batches of material queued ahead.
    pub depth: usize,
}

/// One batch of a stream as one party saw it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchReport {
    /// Images in the batch.
    pub images: usize,
    /// When this party dealt / received the batch's material and evaluated it (Unix seconds).
    pub times: crate::pipeline::BatchTimes,
    /// This party's costs of the batch (offline and online), per label.
    pub layers: Vec<crate::cost::LabelCost>,
}

/// A party's record of a stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StreamReport {
    pub settings: StreamSettings,
    pub batches: Vec<BatchReport>,
    /// Whether the suite's offline phase ran in its own thread (false: a suite without offline
    /// material, run batch after batch).
    pub pipelined: bool,
}

/// The client's images.
#[derive(Clone, Debug)]
pub enum ImageSource {
    /// Normalized images in CHW order, one vector per image.
    Given(Vec<Vec<f32>>),
    /// `count` pseudo-random images (see [`random_images`]) for tests and benchmarks.
    Random { seed: u64, count: usize },
    /// Raw CHW pixels (e.g. dataset images), normalized with the model's public normalization.
    Pixels(Vec<Vec<u8>>),
    /// `count` images whose pixels are produced once the model's input size is known (e.g.
    /// image files resized to the input of a model the client has never seen), then normalized
    /// like [`ImageSource::Pixels`].
    Deferred { count: usize, load: PixelLoader },
}

/// Makes `c x h x w` CHW `u8` pixels for each image, given the model's input dims `(c, h, w)`;
/// `Err` explains why the images do not fit the model.
#[derive(Clone)]
pub struct PixelLoader(pub Arc<LoadPixels>);

/// The function behind a [`PixelLoader`]: the model's input dims `(c, h, w)` to one CHW `u8`
/// vector per image.
pub type LoadPixels =
    dyn Fn((usize, usize, usize)) -> std::result::Result<Vec<Vec<u8>>, String> + Send + Sync;

impl std::fmt::Debug for PixelLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PixelLoader")
    }
}

impl ImageSource {
    /// Number of images.
    pub fn count(&self) -> usize {
        match self {
            ImageSource::Given(v) => v.len(),
            ImageSource::Random { count, .. } => *count,
            ImageSource::Pixels(v) => v.len(),
            ImageSource::Deferred { count, .. } => *count,
        }
    }
}

/// Deterministic pseudo-random images with values uniform in [-1, 1) (AES-CTR PRG keyed by the
/// seed): not secret, only reproducible inputs for tests and benchmarks.
pub fn random_images(seed: u64, count: usize, len: usize) -> Vec<Vec<f32>> {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut prg = Prg::from_seed(key);
    (0..count)
        .map(|_| {
            prg.gen_u64s(len)
                .into_iter()
                .map(|x| ((x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32)
                .collect()
        })
        .collect()
}

/// What one party learned and spent.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PartyReport {
    /// This party's role.
    pub role: usize,
    /// Protocol suite.
    pub protocol: String,
    /// Whether this party supplied the model / the input.
    pub model_owner: bool,
    pub client: bool,
    /// Roles of the model owner and of the client.
    pub owner_role: usize,
    pub client_role: usize,
    /// Images classified.
    pub images: usize,
    /// The model's architecture (public: part of the structure every party receives).
    pub arch: String,
    /// The model's class names, where it carries them (public: part of the same structure),
    /// so that a client can name the classes of a model it has never seen.
    #[serde(default)]
    pub class_names: Vec<String>,
    /// Client only: decoded logits per image.
    pub logits: Option<Vec<Vec<f32>>>,
    /// Client only: class per image.
    pub classes: Option<Vec<usize>>,
    /// Bytes this party sent in the protocol (offline / online), and its rounds.
    pub offline_bytes: u64,
    pub online_bytes: u64,
    pub online_rounds: u64,
    pub offline_rounds: u64,
    /// Bytes of the pre-protocol messages this party sent (structure, weight and input shares,
    /// and when reusing weight masks the owner's state and masked weights).
    pub setup_bytes: u64,
    /// Bytes this party sent in the suite's one-time model setup (seeds, the masked opening of
    /// the weights), and its rounds there (also part of `offline_bytes`/`offline_rounds`).
    #[serde(default)]
    pub model_setup_bytes: u64,
    #[serde(default)]
    pub model_setup_rounds: u64,
    /// The owner–helper pair's weight-mask state the session reused (its public id), if any.
    #[serde(default)]
    pub weight_masks: Option<String>,
    /// Client with a masked-weights cache: whether `F` came from the cache or was received
    /// (and stored), and why a cache file was ignored.
    #[serde(default)]
    pub weight_cache: Option<String>,
    /// Bytes of the pre-protocol messages this party received (the client: the structure, its
    /// weight shares and, when reusing weight masks, `F` unless its cache holds it).
    #[serde(default)]
    pub setup_received_bytes: u64,
    /// Bytes of output shares this party sent to the client (0 for the client and the helper;
    /// not in `setup_bytes` nor in the protocol's bytes).
    pub client_bytes: u64,
    /// Seconds: connection to result, and the online phase.
    pub seconds: f64,
    pub online_seconds: f64,
    /// Seconds of the offline phase (dealer material of these images) and of the one-time
    /// model setup.
    #[serde(default)]
    pub offline_seconds: f64,
    #[serde(default)]
    pub setup_seconds: f64,
    /// When (Unix time, seconds) this party started its offline phase, started its online
    /// phase and finished it: parties on one host share the clock, so a launcher can take the
    /// phases' spans over all three.
    #[serde(default)]
    pub offline_start_unix: f64,
    #[serde(default)]
    pub online_start_unix: f64,
    #[serde(default)]
    pub online_end_unix: f64,
    /// This party's per-layer costs.
    pub layers: Vec<crate::cost::LabelCost>,
    /// A stream's batches (`None` for a single batch).
    #[serde(default)]
    pub stream: Option<StreamReport>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Announce {
    version: u32,
    protocol: String,
    frac_bits: u32,
    model: bool,
    input: bool,
    images: usize,
    /// The session reuses its owner–helper pair's weight masks.
    #[serde(default)]
    fixed_masks: bool,
    /// The images run as a pipelined stream.
    #[serde(default)]
    stream: Option<StreamSettings>,
}

#[derive(Serialize, Deserialize)]
struct ModelMsg {
    spec: ModelSpec,
    group_maps: BTreeMap<String, Vec<u32>>,
    /// Comparison ring sizes of the fast/fss suites (public; derived by the owner from the
    /// plaintext weights, see `fast::config_for_model`).
    cmp_bits: BTreeMap<String, u32>,
    default_bits: u32,
    default_bits_2f: u32,
}

/// Largest comparison ring accepted from the owner.
const MAX_CMP_BITS: u32 = 63;

/// The mesh behind a mutex so the suite's [`Comm`] and the session can both use it.
struct SharedMesh(Arc<Mutex<TlsTransport>>, usize);

impl Transport for SharedMesh {
    fn party(&self) -> usize {
        self.1
    }
    fn send(&mut self, to: usize, msg: &[u8]) -> Result<()> {
        let mut t = self
            .0
            .lock()
            .map_err(|_| MpcError::Transport("mesh lock poisoned".into()))?;
        Transport::send(&mut *t, to, msg)
    }
    fn recv(&mut self, from: usize) -> Result<Vec<u8>> {
        let mut t = self
            .0
            .lock()
            .map_err(|_| MpcError::Transport("mesh lock poisoned".into()))?;
        Transport::recv(&mut *t, from)
    }
}

struct Setup {
    mesh: Arc<Mutex<TlsTransport>>,
    sent: u64,
    received: u64,
}

impl Setup {
    fn send(&mut self, to: usize, tag: u8, body: &[u8]) -> Result<()> {
        let mut m = Vec::with_capacity(body.len() + 1);
        m.push(tag);
        m.extend_from_slice(body);
        self.sent += m.len() as u64;
        let mut t = self
            .mesh
            .lock()
            .map_err(|_| MpcError::Transport("mesh lock poisoned".into()))?;
        Ok(t.send_msg(to, &m)?)
    }

    fn recv(&mut self, from: usize, tag: u8, max: usize) -> Result<Vec<u8>> {
        let mut t = self
            .mesh
            .lock()
            .map_err(|_| MpcError::Transport("mesh lock poisoned".into()))?;
        let mut m = t.recv_msg(from)?;
        self.received += m.len() as u64;
        let bad = |reason: String| MpcError::from(NetError::Protocol { peer: from, reason });
        match m.first() {
            None => {
                return Err(bad(format!(
                    "empty message where a {} message was expected",
                    tag_name(tag)
                )))
            }
            Some(&t) if t != tag => {
                return Err(bad(format!(
                    "got a {} message where a {} message was expected",
                    tag_name(t),
                    tag_name(tag)
                )))
            }
            _ => {}
        }
        if m.len() - 1 > max {
            return Err(bad(format!(
                "{} message of {} bytes exceeds {max}",
                tag_name(tag),
                m.len() - 1
            )));
        }
        m.remove(0);
        Ok(m)
    }

    fn recv_u64(&mut self, from: usize, tag: u8, n: usize) -> Result<Vec<u64>> {
        let b = self.recv(from, tag, n.saturating_mul(8))?;
        if b.len() != n * 8 {
            return Err(NetError::Protocol {
                peer: from,
                reason: format!(
                    "{} message holds {} bytes, expected {} ring elements",
                    tag_name(tag),
                    b.len(),
                    n
                ),
            }
            .into());
        }
        crate::ring::bytes_to_u64s_n(&b, n, from)
    }
}

/// The secret vectors of a fixed-point model, in the order they are shared.
pub(crate) fn secret_vectors(fm: &FixedModel) -> Vec<&Vec<u64>> {
    let mut v = Vec::new();
    for l in &fm.layers {
        match l {
            FixedLayer::Conv { w, b, .. } | FixedLayer::Linear { w, b, .. } => {
                v.push(w);
                v.push(b);
            }
            FixedLayer::Shared { s, .. } => {
                v.push(&s.v);
                v.push(&s.bias);
                if let Some(fg) = &s.fused {
                    v.push(&fg.u);
                    v.push(&fg.beta);
                }
            }
            _ => {}
        }
    }
    v
}

/// For each of [`secret_vectors`]: whether this party needs a share of it in the session. When
/// the pair's fixed weight masks are reused, the masked tensors (convolution and linear
/// weights, deciders `v`, fused `U`) are used only through `F` and the masks, so only the biases
/// (`b`, group biases, `beta`) are shared.
fn shared_vectors(fm: &FixedModel, fixed_masks: bool) -> Vec<bool> {
    let mut v = Vec::new();
    for l in &fm.layers {
        match l {
            FixedLayer::Conv { .. } | FixedLayer::Linear { .. } => v.extend([!fixed_masks, true]),
            FixedLayer::Shared { s, .. } => {
                v.extend([!fixed_masks, true]);
                if s.fused.is_some() {
                    v.extend([!fixed_masks, true]);
                }
            }
            _ => {}
        }
    }
    v
}

/// Lengths of the secret vectors of a (prepared) model, in the order they are shared.
pub(crate) fn secret_lens(fm: &FixedModel) -> Vec<usize> {
    secret_vectors(fm).iter().map(|v| v.len()).collect()
}

/// The dealer's messages of a `mimo` session of `n` images of `fm` (prepared for `mimo`, with
/// the model owner's plaintext): the largest single message to one party and the total to both
/// (what each computing party holds until used), from [`crate::mimo::op_costs`].
pub(crate) fn mimo_dealer_bytes(
    fm: &FixedModel,
    cfg: &crate::mimo::MimoConfig,
    n: usize,
) -> Result<(u64, u64)> {
    let all: Vec<Vec<u64>> = secret_vectors(fm).into_iter().cloned().collect();
    let (_, gp) = assign_shares(fm, 1, all);
    let plan = crate::runner::build_plan(fm, n, &gp);
    let costs = crate::mimo::op_costs(&plan, cfg, fm.fp.frac_bits)?;
    let largest = costs.iter().map(|c| c.to_p0.max(c.to_p1)).max();
    let total: usize = costs.iter().map(|c| c.to_p0 + c.to_p1).sum();
    Ok((largest.unwrap_or(0) as u64, total as u64))
}

/// Normalizes raw CHW pixels with the model's public normalization.
fn pixels_to_inputs(
    v: &[Vec<u8>],
    input_len: usize,
    normalization: &relushare_model::Normalization,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(v.len());
    for img in v {
        if img.len() != input_len {
            return Err(MpcError::Shape(format!(
                "the images have {} pixels, the model expects {}",
                img.len(),
                input_len
            )));
        }
        let mut buf = vec![0f32; input_len];
        normalization.apply(img, &mut buf);
        out.push(buf);
    }
    Ok(out)
}

/// The model as `protocol` runs it (fused gates for the fast suites; see
/// [`crate::protocol::prepare_model`]). All parties derive the same structure; only the owner's
/// folded deciders are meaningful (the others receive shares).
fn prepared(mut fm: FixedModel, protocol: &str) -> Result<FixedModel> {
    let p: crate::protocol::Protocol = protocol.parse()?;
    crate::protocol::prepare_model(p, &mut fm)?;
    Ok(fm)
}

/// A model with the structure of `msg` and all parameters zero (for parties without weights).
fn skeleton(msg: ModelMsg) -> Result<Model> {
    let params = relushare_model::file::expected_params(&msg.spec)
        .map_err(|e| MpcError::Model(e.to_string()))?
        .into_iter()
        .map(|(name, shape)| (name, Tensor::zeros(shape)))
        .collect();
    let m = Model {
        spec: msg.spec,
        params,
        group_maps: msg.group_maps,
    };
    m.validate()
        .map_err(|e| MpcError::Model(format!("model structure from the owner: {e}")))?;
    Ok(m)
}

/// Splits this party's share vectors (in [`secret_vectors`] order) into weights and
/// sharing-layer parameters.
pub(crate) fn assign_shares(
    fm: &FixedModel,
    me: usize,
    mut shares: Vec<Vec<u64>>,
) -> (Vec<WeightShare>, Vec<Option<GroupShares>>) {
    shares.reverse();
    let mut take = || {
        if me == 2 {
            Vec::new()
        } else {
            shares.pop().unwrap_or_default()
        }
    };
    let mut weights = Vec::new();
    let mut gp = Vec::new();
    for l in &fm.layers {
        match l {
            FixedLayer::Conv { name, .. } | FixedLayer::Linear { name, .. } => {
                let w = take();
                let bias = take();
                weights.push(WeightShare {
                    name: name.clone(),
                    w,
                    bias,
                });
                gp.push(None);
            }
            FixedLayer::Shared { s, .. } => {
                let v = take();
                let bias = take();
                let (u, beta) = if s.fused.is_some() {
                    (take(), take())
                } else {
                    (Vec::new(), Vec::new())
                };
                gp.push(Some(GroupShares { v, bias, u, beta }));
            }
            _ => gp.push(None),
        }
    }
    (weights, gp)
}

fn make_suite(
    protocol: &str,
    comm: Comm,
    fp: FixedPoint,
    cfg: &FastConfig,
    fixed: Option<FixedMasks>,
) -> Result<Box<dyn Suite>> {
    let f = fp.frac_bits;
    if protocol == "securenn" && fixed.is_some() {
        return Err(MpcError::Param(
            "securenn has no masked weights to reuse (serving runs fast, fss or mimo)".into(),
        ));
    }
    let fast = |comm, mode, fixed: Option<FixedMasks>| {
        let s = FastSuite::new(comm, f, cfg.clone(), mode);
        Box::new(match fixed {
            Some(m) => s.with_fixed_masks(m),
            None => s,
        }) as Box<dyn Suite>
    };
    match protocol {
        "fast" => Ok(fast(comm, CmpMode::Tree, fixed)),
        "fss" => Ok(fast(comm, CmpMode::Fss, fixed)),
        "mimo" => {
            let s = crate::mimo::MimoSuite::new(
                comm,
                f,
                crate::mimo::MimoConfig {
                    bits: cfg.bits.clone(),
                    default_bits: cfg.default_bits,
                    default_bits_2f: cfg.default_bits_2f,
                },
            );
            Ok(Box::new(match fixed {
                Some(m) => s.with_fixed_masks(m),
                None => s,
            }))
        }
        "securenn" => crate::securenn::factory(comm, fp),
        p => Err(MpcError::Param(format!(
            "protocol {p:?} is not available over the network (use {})",
            PROTOCOLS.join(" or ")
        ))),
    }
}

/// Runs this party's side of a secure inference and closes the mesh. `model` is given by the
/// model owner only; `images` by the client only.
pub fn run(
    mesh: TlsTransport,
    model: Option<&Model>,
    images: Option<&ImageSource>,
    opts: &SessionOptions,
) -> Result<PartyReport> {
    run_with(mesh, model, images, opts, None)
}

/// [`run`], reusing the owner–helper pair's weight masks when `reuse` is given (serving: the
/// client is P0, the owner P1, the helper P2; all three must pass it).
pub fn run_with(
    mesh: TlsTransport,
    model: Option<&Model>,
    images: Option<&ImageSource>,
    opts: &SessionOptions,
    reuse: Option<&MaskReuse>,
) -> Result<PartyReport> {
    run_full(mesh, model, images, opts, reuse, None)
}

/// [`run`] as a pipelined stream ([`crate::pipeline`]): the client's images in batches of
/// `stream.batch`, the dealer's material for the next batches sent (over the same connections)
/// while the current batch is online, and each batch's output shares sent to the client as soon
/// as it is done. The report holds every batch's costs and times.
pub fn run_stream(
    mesh: TlsTransport,
    model: Option<&Model>,
    images: Option<&ImageSource>,
    opts: &SessionOptions,
    stream: StreamSettings,
) -> Result<PartyReport> {
    run_full(mesh, model, images, opts, None, Some(stream))
}

fn run_full(
    mesh: TlsTransport,
    model: Option<&Model>,
    images: Option<&ImageSource>,
    opts: &SessionOptions,
    reuse: Option<&MaskReuse>,
    stream: Option<StreamSettings>,
) -> Result<PartyReport> {
    let start = Instant::now();
    let me = mesh.role();
    let mesh = Arc::new(Mutex::new(mesh));
    let result = run_inner(&mesh, me, model, images, opts, reuse, stream, start);
    // The suite (and its Comm) are gone; take the mesh back to close it.
    let mesh = Arc::try_unwrap(mesh).ok().and_then(|m| m.into_inner().ok());
    match (&result, mesh) {
        (Ok(_), Some(m)) => m.close().map_err(MpcError::from)?,
        // Flush what was queued (e.g. our announce) so peers see the real cause, not a reset;
        // about a second per connection at most.
        (Err(_), Some(m)) => m.close_after_error(),
        (_, None) => {}
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn run_inner(
    mesh: &Arc<Mutex<TlsTransport>>,
    me: usize,
    model: Option<&Model>,
    images: Option<&ImageSource>,
    opts: &SessionOptions,
    reuse: Option<&MaskReuse>,
    stream: Option<StreamSettings>,
    start: Instant,
) -> Result<PartyReport> {
    if let Some(st) = stream {
        crate::pipeline::check_depth(st.depth)?;
        if st.batch == 0 || st.batch > MAX_IMAGES {
            return Err(MpcError::Param(format!(
                "stream batches of 1 to {MAX_IMAGES} images (got {})",
                st.batch
            )));
        }
        if reuse.is_some() {
            return Err(MpcError::Param(
                "a stream does not reuse a serving pair's weight masks".into(),
            ));
        }
    }
    if !PROTOCOLS.contains(&opts.protocol.as_str()) {
        return Err(MpcError::Param(format!(
            "protocol {:?} is not available over the network (use {})",
            opts.protocol,
            PROTOCOLS.join(" or ")
        )));
    }
    FixedPoint::new(opts.frac_bits)?;
    if let Some(r) = reuse {
        masks_context(r, me, &opts.protocol, opts.frac_bits)?;
    }
    if let Some(imgs) = images {
        if imgs.count() == 0 || imgs.count() > MAX_IMAGES {
            return Err(MpcError::Param(format!(
                "between 1 and {MAX_IMAGES} images per run (got {})",
                imgs.count()
            )));
        }
    }
    let others: Vec<usize> = (0..3).filter(|&j| j != me).collect();
    let mut io = Setup {
        mesh: mesh.clone(),
        sent: 0,
        received: 0,
    };

    // 1. Announce and agree.
    let mine = Announce {
        version: SESSION_VERSION,
        protocol: opts.protocol.clone(),
        frac_bits: opts.frac_bits,
        model: model.is_some(),
        input: images.is_some(),
        images: images.map_or(0, |i| i.count()),
        fixed_masks: reuse.is_some(),
        stream,
    };
    let body = serde_json::to_vec(&mine).map_err(|e| MpcError::Param(e.to_string()))?;
    for &j in &others {
        io.send(j, TAG_ANNOUNCE, &body)?;
    }
    let mut all: Vec<Announce> = vec![mine.clone(); 3];
    for &j in &others {
        let b = io.recv(j, TAG_ANNOUNCE, MAX_ANNOUNCE)?;
        let a: Announce = serde_json::from_slice(&b).map_err(|e| {
            MpcError::from(NetError::Protocol {
                peer: j,
                reason: format!("bad announce message: {e}"),
            })
        })?;
        if a.version != SESSION_VERSION {
            return Err(MpcError::Param(format!(
                "party {j} speaks session version {}, this is {SESSION_VERSION}",
                a.version
            )));
        }
        if a.protocol != mine.protocol || a.frac_bits != mine.frac_bits {
            return Err(MpcError::Param(format!(
                "party {j} runs protocol {} with {} fractional bits, this party {} with {}",
                a.protocol, a.frac_bits, mine.protocol, mine.frac_bits
            )));
        }
        if a.fixed_masks != mine.fixed_masks {
            let says = |b: bool| if b { "reuses" } else { "does not reuse" };
            return Err(MpcError::Param(format!(
                "party {j} {} the owner-helper pair's weight masks, this party {}",
                says(a.fixed_masks),
                says(mine.fixed_masks)
            )));
        }
        if a.stream != mine.stream {
            return Err(MpcError::Param(format!(
                "party {j} runs {:?}, this party {:?} (stream settings must agree)",
                a.stream, mine.stream
            )));
        }
        all[j] = a;
    }
    let owners: Vec<usize> = (0..3).filter(|&j| all[j].model).collect();
    let clients: Vec<usize> = (0..3).filter(|&j| all[j].input).collect();
    if owners.len() != 1 {
        return Err(MpcError::Param(format!(
            "exactly one party must supply the model (--model or --random-weights); supplied by: {owners:?}"
        )));
    }
    if clients.len() != 1 {
        return Err(MpcError::Param(format!(
            "exactly one party must supply the input (--image or --random-image); supplied by: {clients:?}"
        )));
    }
    let (owner, client) = (owners[0], clients[0]);
    if reuse.is_some() && (owner, client) != (1, 0) {
        return Err(MpcError::Param(
            "reusing weight masks needs the client as party 0 and the owner as party 1".into(),
        ));
    }
    let n = all[client].images;
    if n == 0 || n > MAX_IMAGES {
        return Err(MpcError::Param(format!("the client announced {n} images")));
    }

    // 2. Model structure.
    let fm_secret;
    let cmp_cfg;
    let normalization;
    let input_dims;
    let arch;
    let class_names;
    let fm = if me == owner {
        let model = model.expect("owner has the model");
        normalization = model.spec.normalization.clone();
        input_dims = model.spec.input;
        arch = model.spec.arch.name().to_string();
        class_names = model.spec.class_names.clone();
        fm_secret = prepared(
            FixedModel::from_model(model, opts.frac_bits)?,
            &opts.protocol,
        )?;
        cmp_cfg = match opts.protocol.as_str() {
            "securenn" => FastConfig::defaults(opts.frac_bits),
            "mimo" => {
                let c = crate::mimo::config_for_model(&fm_secret, model)?;
                FastConfig {
                    bits: c.bits,
                    default_bits: c.default_bits,
                    default_bits_2f: c.default_bits_2f,
                }
            }
            "fss" => crate::fast::config_for_mode(&fm_secret, model, crate::fast::CmpMode::Fss)?,
            _ => crate::fast::config_for_model(&fm_secret, model)?,
        };
        let msg = ModelMsg {
            spec: model.spec.clone(),
            group_maps: model.group_maps.clone(),
            cmp_bits: cmp_cfg.bits.clone(),
            default_bits: cmp_cfg.default_bits,
            default_bits_2f: cmp_cfg.default_bits_2f,
        };
        let body = serde_json::to_vec(&msg).map_err(|e| MpcError::Model(e.to_string()))?;
        for &j in &others {
            io.send(j, TAG_MODEL, &body)?;
        }
        &fm_secret
    } else {
        let b = io.recv(owner, TAG_MODEL, MAX_MODEL_MSG)?;
        let msg: ModelMsg = serde_json::from_slice(&b).map_err(|e| {
            MpcError::from(NetError::Protocol {
                peer: owner,
                reason: format!("bad model message: {e}"),
            })
        })?;
        let bits_ok = |b: u32| (2..=MAX_CMP_BITS).contains(&b);
        if !msg.cmp_bits.values().all(|&b| bits_ok(b))
            || !bits_ok(msg.default_bits)
            || !bits_ok(msg.default_bits_2f)
        {
            return Err(NetError::Protocol {
                peer: owner,
                reason: "comparison sizes out of range".into(),
            }
            .into());
        }
        cmp_cfg = FastConfig {
            bits: msg.cmp_bits.clone(),
            default_bits: msg.default_bits,
            default_bits_2f: msg.default_bits_2f,
        };
        normalization = msg.spec.normalization.clone();
        input_dims = msg.spec.input;
        arch = msg.spec.arch.name().to_string();
        class_names = msg.spec.class_names.clone();
        fm_secret = prepared(
            FixedModel::from_model(&skeleton(msg)?, opts.frac_bits)?,
            &opts.protocol,
        )?;
        &fm_secret
    };
    // The vectors shared in this session (all, or only the biases when reusing weight masks);
    // the others get length 0 here.
    let shared = shared_vectors(fm, reuse.is_some());
    let lens: Vec<usize> = secret_vectors(fm)
        .iter()
        .zip(&shared)
        .map(|(v, &s)| if s { v.len() } else { 0 })
        .collect();
    let total: usize = lens.iter().sum();
    let images: Option<Vec<Vec<f32>>> = match images {
        Some(ImageSource::Given(v)) => {
            if v.iter().any(|i| i.len() != fm.input_len) {
                return Err(MpcError::Shape(format!(
                    "every image must have {} values for this model",
                    fm.input_len
                )));
            }
            Some(v.clone())
        }
        Some(ImageSource::Random { seed, count }) => {
            Some(random_images(*seed, *count, fm.input_len))
        }
        Some(ImageSource::Deferred { count, load }) => {
            let v = (load.0)((input_dims.c, input_dims.h, input_dims.w)).map_err(|e| {
                MpcError::Shape(format!(
                    "the images do not fit the model's {}x{}x{} input: {e}",
                    input_dims.c, input_dims.h, input_dims.w
                ))
            })?;
            if v.len() != *count {
                return Err(MpcError::Shape(format!(
                    "{} images announced, {} made",
                    count,
                    v.len()
                )));
            }
            Some(pixels_to_inputs(&v, fm.input_len, &normalization)?)
        }
        Some(ImageSource::Pixels(v)) => Some(pixels_to_inputs(v, fm.input_len, &normalization)?),
        None => None,
    };

    // 3. Weight shares (owner -> P0, P1).
    let mut prg = Prg::from_os()?;
    let my_weights: Vec<u64> = if me == owner {
        let mut s0 = Vec::with_capacity(total);
        let mut s1 = Vec::with_capacity(total);
        for (v, _) in secret_vectors(fm)
            .into_iter()
            .zip(&shared)
            .filter(|&(_, &s)| s)
        {
            let r = prg.gen_u64s(v.len());
            s1.extend(crate::ring::sub(v, &r));
            s0.extend(r);
        }
        let mut keep = Vec::new();
        for (p, s) in [(0usize, s0), (1usize, s1)] {
            if p == me {
                keep = s;
            } else {
                io.send(p, TAG_WEIGHTS, &crate::ring::u64s_to_bytes(&s))?;
            }
        }
        keep
    } else if me < 2 {
        io.recv_u64(owner, TAG_WEIGHTS, total)?
    } else {
        Vec::new()
    };
    let mut split = Vec::with_capacity(lens.len());
    if me < 2 {
        let mut off = 0;
        for l in &lens {
            split.push(my_weights[off..off + l].to_vec());
            off += l;
        }
    }
    drop(my_weights);
    let (weights, gp) = assign_shares(fm, me, split);

    // 4. Input shares (client -> P0, P1).
    let in_len = n * fm.input_len;
    let x: Shared = if me == client {
        let imgs = images.as_ref().expect("client has the images");
        let mut enc = Vec::with_capacity(in_len);
        for img in imgs {
            enc.extend(fm.encode_input(img)?);
        }
        crate::protocol::check_input(
            opts.protocol.parse()?,
            &normalization,
            fm.fp.frac_bits,
            &enc,
        )?;
        let r = prg.gen_u64s(enc.len());
        let s1 = crate::ring::sub(&enc, &r);
        let mut keep = Vec::new();
        for (p, s) in [(0usize, r), (1usize, s1)] {
            if p == me {
                keep = s;
            } else {
                io.send(p, TAG_INPUT, &crate::ring::u64s_to_bytes(&s))?;
            }
        }
        keep
    } else if me < 2 {
        io.recv_u64(client, TAG_INPUT, in_len)?
    } else {
        Vec::new()
    };

    // 5. The protocol.
    let plan = crate::runner::build_plan(fm, n, &gp);
    let t_setup = Instant::now();
    let (fixed, weight_masks, weight_cache) = match reuse {
        Some(r) => {
            let (m, id, note) = fixed_masks(r, &mut io, fm, &plan, &weights, opts)?;
            (Some(m), Some(id), note)
        }
        None => (None, None, None),
    };
    let mut comm = Comm::new(Box::new(SharedMesh(mesh.clone(), me)));
    comm.set_label("setup");
    let mut suite = make_suite(&opts.protocol, comm, fm.fp, &cmp_cfg, fixed)?;
    let mut costs: PartyCosts = BTreeMap::new();
    suite.comm().set_phase(Phase::Offline);
    suite.comm().set_label("model-setup");
    suite.prepare(&plan, &weights)?;
    let setup_seconds = t_setup.elapsed().as_secs_f64();
    let model_setup = suite.comm().take_costs();
    let model_setup_bytes = model_setup.values().map(|c| c.bytes).sum();
    let model_setup_rounds = model_setup.values().map(|c| c.rounds).sum();
    crate::cost::merge_into(&mut costs, &model_setup);
    for &j in &others {
        io.send(j, TAG_READY, &[])?;
    }
    for &j in &others {
        io.recv(j, TAG_READY, 0)?;
    }
    // What both paths report alike: roles, model, costs, setup.
    let base = |costs: &PartyCosts, setup_bytes: u64, setup_received_bytes: u64| {
        let (report, layers) = party_costs(fm, costs);
        PartyReport {
            role: me,
            protocol: opts.protocol.clone(),
            model_owner: me == owner,
            client: me == client,
            owner_role: owner,
            client_role: client,
            images: n,
            arch: arch.clone(),
            class_names: class_names.clone(),
            offline_bytes: report.offline_bytes(),
            online_bytes: report.online_bytes(),
            online_rounds: report.online_rounds(),
            offline_rounds: report.offline_rounds(),
            setup_bytes,
            model_setup_bytes,
            model_setup_rounds,
            weight_masks: weight_masks.clone(),
            weight_cache: weight_cache.clone(),
            setup_received_bytes,
            seconds: start.elapsed().as_secs_f64(),
            setup_seconds,
            layers,
            ..PartyReport::default()
        }
    };
    if let Some(st) = stream {
        let out = stream_protocol(mesh, suite, fm, &weights, &gp, x, n, st, client, costs)?;
        let batches = &out.report.batches;
        let first = batches.first().map(|b| b.times).unwrap_or_default();
        let last = batches.last().map(|b| b.times).unwrap_or_default();
        let online_seconds = batches
            .iter()
            .map(|b| b.times.online_end - b.times.online_start)
            .sum();
        let offline_seconds = batches
            .iter()
            .map(|b| b.times.offline_end - b.times.offline_start)
            .sum();
        let (logits, classes) = match &out.logits {
            Some(l) => decoded(fm, l),
            None => (None, None),
        };
        return Ok(PartyReport {
            logits,
            classes,
            client_bytes: out.client_bytes,
            online_seconds,
            offline_seconds,
            offline_start_unix: first.offline_start,
            online_start_unix: first.online_start,
            online_end_unix: last.online_end,
            ..base(&out.costs, io.sent, io.received)
        }
        .with_stream(out.report));
    }
    suite.comm().set_phase(Phase::Offline);
    suite.comm().set_label("offline");
    let offline_start_unix = unix_now();
    let t_offline = Instant::now();
    suite.offline(&plan, &weights)?;
    let offline_seconds = t_offline.elapsed().as_secs_f64();
    suite.comm().set_phase(Phase::Online);
    let online_start_unix = unix_now();
    let t_online = Instant::now();
    let x = crate::runner::exec_plan(
        suite.as_mut(),
        &plan,
        x,
        &weights,
        &fm.out_lens,
        |_, _, _| {},
    )?;
    suite.comm().set_label("output");
    let out_share = suite.reveal_to_client(&x)?;
    let online_seconds = t_online.elapsed().as_secs_f64();
    let online_end_unix = unix_now();
    crate::cost::merge_into(&mut costs, &suite.comm().take_costs());
    drop(suite);

    // 6. Output shares to the client.
    let setup_received = io.received;
    let out_len = n * fm.output_len;
    let mut logits = None;
    let mut classes = None;
    let (mut client_bytes, mut output_frame) = (0u64, 0u64);
    if me < 2 && me != client {
        let s = out_share
            .as_ref()
            .ok_or_else(|| MpcError::Shape("no output share".into()))?;
        let before = io.sent;
        io.send(client, TAG_OUTPUT, &crate::ring::u64s_to_bytes(s))?;
        output_frame = io.sent - before;
        client_bytes = 8 * s.len() as u64;
    }
    if me == client {
        let mut y = vec![0u64; out_len];
        for p in 0..2 {
            let s = if p == me {
                out_share
                    .clone()
                    .ok_or_else(|| MpcError::Shape("no output share".into()))?
            } else {
                io.recv_u64(p, TAG_OUTPUT, out_len)?
            };
            crate::ring::check_len("output share", &s, out_len)?;
            crate::ring::add_assign(&mut y, &s);
        }
        let per: Vec<Vec<u64>> = y.chunks(fm.output_len.max(1)).map(|c| c.to_vec()).collect();
        (logits, classes) = decoded(fm, &per);
    }

    Ok(PartyReport {
        logits,
        classes,
        client_bytes,
        online_seconds,
        offline_seconds,
        offline_start_unix,
        online_start_unix,
        online_end_unix,
        ..base(&costs, io.sent - output_frame, setup_received)
    })
}

impl PartyReport {
    fn with_stream(mut self, stream: StreamReport) -> PartyReport {
        self.stream = Some(stream);
        self
    }
}

/// One party's costs per label (model setup, offline, every layer, output), and the labels
/// that cost anything.
fn party_costs(fm: &FixedModel, costs: &PartyCosts) -> (CostReport, Vec<crate::cost::LabelCost>) {
    let mut names: Vec<String> = vec!["model-setup".into(), "offline".into()];
    names.extend(fm.layers.iter().map(|l| l.name().to_string()));
    names.push("output".into());
    let report = CostReport::from_parties(std::slice::from_ref(costs), &names);
    let layers = report
        .layers
        .iter()
        .filter(|l| l.online_bytes + l.offline_bytes > 0 || l.online_rounds > 0)
        .cloned()
        .collect();
    (report, layers)
}

/// The client's decoded logits and classes of its encoded outputs, one vector per image.
type Decoded = (Option<Vec<Vec<f32>>>, Option<Vec<usize>>);
fn decoded(fm: &FixedModel, per: &[Vec<u64>]) -> Decoded {
    (
        Some(per.iter().map(|c| fm.fp.decode_vec(c)).collect()),
        Some(per.iter().map(|c| crate::plain::argmax_fixed(c)).collect()),
    )
}

/// What a party's stream produced.
struct StreamOut {
    /// Costs of all batches (and the model setup, merged in by the caller's `costs`).
    costs: PartyCosts,
    report: StreamReport,
    client_bytes: u64,
    /// The client's encoded logits, per image.
    logits: Option<Vec<Vec<u64>>>,
}

/// Step 5 of a stream: split the mesh into lanes and run the batches through
/// [`crate::pipeline::run_party`]; each batch's output shares go to the client on
/// [`crate::pipeline::LANE_OUTPUT`] as soon as the batch is done.
#[allow(clippy::too_many_arguments)]
fn stream_protocol(
    mesh: &Arc<Mutex<TlsTransport>>,
    mut suite: Box<dyn Suite>,
    fm: &FixedModel,
    weights: &[WeightShare],
    gp: &[Option<GroupShares>],
    x: Shared,
    n: usize,
    st: StreamSettings,
    client: usize,
    mut costs: PartyCosts,
) -> Result<StreamOut> {
    use crate::pipeline::{self, LANES, LANE_CONTROL, LANE_OFFLINE, LANE_ONLINE, LANE_OUTPUT};
    let me = suite.party();
    let sizes = pipeline::batch_sizes(n, st.batch)?;
    let mut plans: Vec<crate::suite::Plan> = Vec::new();
    for &b in &sizes {
        if !plans.iter().any(|p| p.n == b) {
            plans.push(crate::runner::build_plan(fm, b, gp));
        }
    }
    let by_batch: Vec<&crate::suite::Plan> = sizes
        .iter()
        .map(|&b| plans.iter().find(|p| p.n == b).expect("built above"))
        .collect();
    let mut inputs = Vec::with_capacity(sizes.len());
    let mut off = 0;
    for &b in &sizes {
        let len = b * fm.input_len;
        inputs.push(if me == 2 {
            Vec::new()
        } else {
            x.get(off..off + len)
                .ok_or_else(|| MpcError::Shape("input shares shorter than the images".into()))?
                .to_vec()
        });
        off += len;
    }
    drop(x);
    let cancel = crate::transport::CancelToken::new();
    let timeout = mesh
        .lock()
        .map_err(|_| MpcError::Transport("mesh lock poisoned".into()))?
        .timeout();
    let mut lanes: Vec<Option<super::LaneTransport>> = TlsTransport::lanes(mesh, LANES, &cancel)?
        .into_iter()
        .map(Some)
        .collect();
    let mut lane = |i: usize| lanes[i].take().expect("each lane taken once");
    let (online, offline, control, mut output) = (
        lane(LANE_ONLINE),
        lane(LANE_OFFLINE),
        lane(LANE_CONTROL),
        lane(LANE_OUTPUT),
    );
    suite.comm().replace_transport(Box::new(online))?;
    let clock = unix_now;
    let out_len = fm.output_len;
    let mut logits: Vec<Vec<u64>> = Vec::new();
    let mut client_bytes = 0u64;
    let party = pipeline::StreamParty {
        suite: suite.as_mut(),
        offline: Comm::new(Box::new(offline)),
        control: Box::new(control),
        depth: st.depth,
        timeout,
        cancel: cancel.clone(),
        clock: &clock,
    };
    let batches = pipeline::run_party(
        party,
        &by_batch,
        weights,
        inputs,
        &fm.out_lens,
        &mut |j, b| {
            let want = b.n * out_len;
            if me < 2 && me != client {
                let s = b
                    .output
                    .as_ref()
                    .ok_or_else(|| MpcError::Shape("no output share".into()))?;
                Transport::send(&mut output, client, &crate::ring::u64s_to_bytes(s))?;
                client_bytes += 8 * s.len() as u64;
            }
            if me == client {
                let mut y = vec![0u64; want];
                for p in 0..2 {
                    let s = if p == me {
                        b.output
                            .clone()
                            .ok_or_else(|| MpcError::Shape("no output share".into()))?
                    } else {
                        let m = Transport::recv(&mut output, p)?;
                        crate::ring::bytes_to_u64s_n(&m, want, p).map_err(|_| {
                            MpcError::from(NetError::Protocol {
                                peer: p,
                                reason: format!(
                                    "output shares of batch {j}: {} bytes, expected {}",
                                    m.len(),
                                    8 * want
                                ),
                            })
                        })?
                    };
                    crate::ring::check_len("output share", &s, want)?;
                    crate::ring::add_assign(&mut y, &s);
                }
                logits.extend(y.chunks(out_len.max(1)).map(|c| c.to_vec()));
            }
            Ok(())
        },
    );
    if batches.is_err() {
        cancel.cancel();
    }
    let (batches, pipelined) = batches?;
    drop(suite);
    let mut names: Vec<String> = vec!["offline".into()];
    names.extend(fm.layers.iter().map(|l| l.name().to_string()));
    names.push("output".into());
    let mut reports = Vec::with_capacity(batches.len());
    for b in &batches {
        crate::cost::merge_into(&mut costs, &b.costs);
        let r = CostReport::from_parties(std::slice::from_ref(&b.costs), &names);
        reports.push(BatchReport {
            images: b.n,
            times: b.times,
            layers: r
                .layers
                .into_iter()
                .filter(|l| l.online_bytes + l.offline_bytes > 0 || l.online_rounds > 0)
                .collect(),
        });
    }
    Ok(StreamOut {
        costs,
        report: StreamReport {
            settings: st,
            batches: reports,
            pipelined,
        },
        client_bytes,
        logits: (me == client).then_some(logits),
    })
}

/// Checks that `reuse` fits this party and a protocol with masked weights.
fn masks_context(reuse: &MaskReuse, me: usize, protocol: &str, frac_bits: u32) -> Result<()> {
    crate::fast::masks::context_label(protocol, frac_bits)?;
    let want = match reuse {
        MaskReuse::Client { .. } => 0,
        MaskReuse::Owner { .. } => 1,
        MaskReuse::Helper(_) => 2,
    };
    if me != want {
        return Err(MpcError::Param(format!(
            "party {me} was given the weight-mask part of party {want}"
        )));
    }
    Ok(())
}

/// The `MASKS`/`FIXED` exchange of a session that reuses its pair's weight masks: the owner
/// computes `F` once per context (then takes it from its state) and sends the helper the state
/// (with the keys while the helper lacks them) and the client the state id, the seed of `B_0`,
/// `F`'s digest and `F` itself unless the client's request named that very state and digest
/// (its [`masks::WeightCache`]). Returns this party's masks, the state id and, for the client,
/// what became of its cache.
fn fixed_masks(
    reuse: &MaskReuse,
    io: &mut Setup,
    fm: &FixedModel,
    plan: &crate::suite::Plan,
    weights: &[WeightShare],
    opts: &SessionOptions,
) -> Result<(FixedMasks, String, Option<String>)> {
    let (proto, bits) = (opts.protocol.as_str(), opts.frac_bits);
    let bad = |peer: usize, reason: String| MpcError::from(NetError::Protocol { peer, reason });
    match reuse {
        MaskReuse::Owner {
            state,
            register,
            client_holds,
        } => {
            let o = state.opening(proto, bits, |seeds| {
                // The plan over the plaintext parameters (the layout of the masked tensors
                // does not depend on the batch size).
                let all: Vec<Vec<u64>> = secret_vectors(fm).into_iter().cloned().collect();
                let (pw, pg) = assign_shares(fm, 1, all);
                let pplan = crate::runner::build_plan(fm, 1, &pg);
                crate::fast::masks::opening_for(proto, &pplan, &pw, seeds)
            })?;
            let n = crate::fast::masks::masked_len_for(proto, plan, weights)?;
            if o.f.len() != n {
                return Err(MpcError::Shape(format!(
                    "the masked weights have {} elements, the session's plan masks {n}",
                    o.f.len()
                )));
            }
            let (s0, s1) = state.keys().seeds(proto, bits)?;
            let id = masks::id_bytes(state.id())?;
            let mut m = id.to_vec();
            if *register {
                m.extend_from_slice(&state.keys().to_bytes());
            }
            io.send(2, TAG_MASKS, &m)?;
            let current = *client_holds == masks::claim_of(state.id(), &o.digest);
            let mut c = Vec::with_capacity(FIXED_HEAD + if current { 0 } else { 8 * n });
            c.extend_from_slice(&id);
            c.extend_from_slice(&s0);
            c.extend_from_slice(&o.digest);
            if !current {
                c.extend_from_slice(&crate::ring::u64s_to_bytes(&o.f));
            }
            io.send(0, TAG_FIXED, &c)?;
            Ok((
                FixedMasks::Owner { f: o.f, seed1: s1 },
                state.id().to_string(),
                None,
            ))
        }
        MaskReuse::Helper(store) => {
            let b = io.recv(1, TAG_MASKS, masks::MASK_ID_BYTES + MASK_KEYS_BYTES)?;
            if b.len() != masks::MASK_ID_BYTES && b.len() != masks::MASK_ID_BYTES + MASK_KEYS_BYTES
            {
                return Err(bad(
                    1,
                    format!("weight-mask state message of {} bytes", b.len()),
                ));
            }
            let id = masks::id_of(&b[..masks::MASK_ID_BYTES]);
            if b.len() > masks::MASK_ID_BYTES {
                store.register(&id, MaskKeys::from_bytes(&b[masks::MASK_ID_BYTES..])?)?;
            }
            let keys = store.get(&id).ok_or_else(|| {
                bad(
                    1,
                    format!(
                        "the weight-mask state {id} is not held by this helper (instance {}); \
                         the owner must send its keys",
                        store.instance()
                    ),
                )
            })?;
            let (seed0, seed1) = keys.seeds(proto, bits)?;
            Ok((FixedMasks::Dealer { seed0, seed1 }, id, None))
        }
        MaskReuse::Client { cache } => {
            let n = crate::fast::masks::masked_len_for(proto, plan, weights)?;
            let b = io.recv(1, TAG_FIXED, FIXED_HEAD.saturating_add(n.saturating_mul(8)))?;
            let (held, fresh) = client_fixed(&b, n, cache.as_deref().and_then(|c| c.held()))
                .map_err(|r| bad(1, r))?;
            let note = cache.as_deref().map(|c| {
                let was = c
                    .ignored()
                    .map(|w| format!(" (the cache file was ignored: {w})"))
                    .unwrap_or_default();
                if !fresh {
                    format!(
                        "masked weights taken from {} ({} bytes not sent)",
                        c.path().display(),
                        8 * n
                    )
                } else {
                    match c.store(&held) {
                        Ok(()) => format!(
                            "masked weights received and stored in {}{was}",
                            c.path().display()
                        ),
                        Err(e) => format!("masked weights received, not stored: {e}{was}"),
                    }
                }
            });
            let mut seed0 = [0u8; 16];
            seed0.copy_from_slice(&b[masks::MASK_ID_BYTES..2 * masks::MASK_ID_BYTES]);
            Ok((FixedMasks::Client { f: held.f, seed0 }, held.id, note))
        }
    }
}

/// Bytes of the owner's `FIXED` message before `F`: state id, seed of `B_0`, digest of `F`.
const FIXED_HEAD: usize = 2 * masks::MASK_ID_BYTES + 32;

/// The client's masked weights from the owner's `FIXED` message `b` (for `n` weights): `F`
/// itself, which must match the digest sent with it, or only the header, which must name the
/// state and digest of the `held` ones. Returns them and whether they are new.
pub(crate) fn client_fixed(
    b: &[u8],
    n: usize,
    held: Option<&masks::Held>,
) -> std::result::Result<(masks::Held, bool), String> {
    if b.len() < FIXED_HEAD {
        return Err(format!("masked-weights message of {} bytes", b.len()));
    }
    let id = masks::id_of(&b[..masks::MASK_ID_BYTES]);
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&b[2 * masks::MASK_ID_BYTES..FIXED_HEAD]);
    if b.len() == FIXED_HEAD {
        return match held {
            Some(h) if h.id == id && h.digest == digest && h.f.len() == n => Ok((h.clone(), false)),
            Some(h) if h.id == id && h.digest == digest => Err(format!(
                "the owner says the cached masked weights are current, but they hold {} elements \
                 and the model needs {n}",
                h.f.len()
            )),
            _ => Err(format!(
                "the owner sent no masked weights, as if this client held those of state {id}, \
                 which it does not"
            )),
        };
    }
    if b.len() != FIXED_HEAD + 8 * n {
        return Err(format!(
            "masked weights of {} bytes, expected {} for {n} weights",
            b.len(),
            FIXED_HEAD + 8 * n
        ));
    }
    if masks::digest_of_bytes(&b[FIXED_HEAD..]) != digest {
        return Err("the masked weights do not match the digest sent with them".into());
    }
    let f = crate::ring::bytes_to_u64s_n(&b[FIXED_HEAD..], n, 1).map_err(|e| e.to_string())?;
    Ok((
        masks::Held {
            id,
            digest,
            f: Arc::new(f),
        },
        true,
    ))
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
