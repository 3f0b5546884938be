//! `relushare serve`: the long-running model owner or helper of private inference as a service
//! (`relushare_mpc::net::serve`). Clients connect with `relushare classify`.
//!
//! ```text
//! relushare keys --out K --clients 8
//! relushare serve --role helper --keys K --listen 127.0.0.1:7200
//! relushare serve --role owner  --keys K --listen 127.0.0.1:7100 --helper 127.0.0.1:7200 --model m.safetensors
//! ```

use std::path::PathBuf;

use anyhow::{bail, Result};
use relushare_mpc::net::{
    self,
    serve::{self, ServeConfig, ServeRole},
};

use crate::model_args::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    /// owner (holds the model, P1) or helper (P2).
    #[arg(long)]
    pub role: ServeRole,
    /// Keys directory from `relushare keys --clients N` (ca.crt, session-id, owner.* or
    /// helper.*; the deny list `revoked` is read from here).
    #[arg(long)]
    pub keys: PathBuf,
    /// Address to listen on, e.g. 127.0.0.1:7100.
    #[arg(long)]
    pub listen: String,
    /// Owner: the helper's address.
    #[arg(long)]
    pub helper: Option<String>,
    /// Owner: the model (a model file, or --arch/--preset/--random-weights).
    #[command(flatten)]
    pub source: ModelArgs,
    /// Sessions running at once (default: the number of cores).
    #[arg(long)]
    pub max_sessions: Option<usize>,
    /// Sessions that may wait for a slot (default: 4x --max-sessions); more are told "busy".
    #[arg(long)]
    pub queue: Option<usize>,
    /// Seconds a queued session waits for a slot.
    #[arg(long, default_value_t = 30.0)]
    pub queue_wait: f64,
    /// Seconds for any single read or write, and for a connection's TLS handshake and request.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Longest session in seconds.
    #[arg(long, default_value_t = 600.0)]
    pub session_timeout: f64,
    /// Most images per session.
    #[arg(long, default_value_t = serve::DEFAULT_MAX_IMAGES)]
    pub max_images: usize,
    /// Most connections in their TLS handshake or request at once (more are closed at once).
    #[arg(long, default_value_t = serve::DEFAULT_MAX_PENDING)]
    pub max_pending: usize,
    /// Owner: an emulated network on its link to the helper (benchmarks; clients shape their
    /// own links with `classify --network`).
    #[command(flatten)]
    pub net: crate::net_args::NetworkArgs,
}

use crate::net_args::secs;

pub fn run(a: Args) -> Result<()> {
    let model = a.source.load_normalized()?;
    match (a.role, &model, &a.helper) {
        (ServeRole::Owner, None, _) => {
            bail!("the owner needs a model: --model FILE or --arch A --random-weights")
        }
        (ServeRole::Owner, _, None) => bail!("the owner needs --helper HOST:PORT"),
        (ServeRole::Helper, Some(_), _) => {
            bail!("the helper holds no model: drop --model/--random-weights")
        }
        (ServeRole::Helper, _, Some(_)) => bail!("--helper is for the owner"),
        _ => {}
    }
    let mut cfg = ServeConfig::new(a.keys.clone(), a.role);
    cfg.helper = a.helper.clone();
    if let Some(m) = a.max_sessions {
        cfg.max_sessions = m;
    }
    cfg.queue = a.queue.unwrap_or(4 * cfg.max_sessions);
    cfg.queue_wait = secs("queue-wait", a.queue_wait)?;
    cfg.timeout = secs("timeout", a.timeout)?;
    cfg.session_timeout = secs("session-timeout", a.session_timeout)?;
    cfg.max_images = a.max_images;
    cfg.max_pending = a.max_pending;
    cfg.network = a.net.profile()?;
    if cfg.network.is_some() && a.role == ServeRole::Helper {
        bail!("--network is for the owner's link to the helper (and for classify); the helper dials no one");
    }
    if cfg.max_sessions == 0 || cfg.max_images == 0 || cfg.max_pending == 0 {
        bail!("--max-sessions, --max-images and --max-pending must be at least 1");
    }
    let listener = net::bind(&a.listen)?;
    let log = serve::stderr_logger(a.role);
    let server = serve::serve(cfg.clone(), listener, model, log.clone())?;
    log(&format!(
        "serving on {} (deployment {}), up to {} sessions at once, {} queued",
        server.addr(),
        std::fs::read_to_string(a.keys.join("session-id"))
            .unwrap_or_default()
            .trim(),
        cfg.max_sessions,
        cfg.queue
    ));
    server.wait();
    Ok(())
}
