//! `relushare keys`: a fresh session CA and certificates/keys for parties 0, 1 and 2, or with
//! `--clients N` the keys of a serving deployment (CA, `owner`, `helper`, `client-1` ...
//! `client-N`; see `relushare serve`).
//!
//! The CA key is discarded after signing; private keys are written with mode 0600 through a
//! temporary file and a rename. Give each party `ca.crt`, `session-id` and its own
//! `NAME.crt`/`NAME.key`.

use std::path::PathBuf;

use anyhow::Result;
use relushare_mpc::net::pki;

#[derive(clap::Args)]
pub struct Args {
    /// Directory to write the session's keys into (created with mode 0700 if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Session id (letters, digits, '.', '_', '-'; at most 64). Default: 128 random bits.
    #[arg(long)]
    pub session_id: Option<String>,
    /// Keys for a serving deployment with this many clients (`client-1` ... `client-N`), plus
    /// `owner` and `helper`, instead of one session's `party-0..2`.
    #[arg(long)]
    pub clients: Option<usize>,
    /// Replace the keys of an earlier session in the same directory.
    #[arg(long)]
    pub force: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let g = match a.clients {
        Some(n) => pki::generate_deployment(&a.out, n, a.session_id.as_deref(), a.force)?,
        None => pki::generate(&a.out, a.session_id.as_deref(), a.force)?,
    };
    if a.json {
        let files: Vec<String> = g.files.iter().map(|f| f.display().to_string()).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "dir": g.dir.display().to_string(),
                "session_id": g.session_id,
                "files": files,
            }))?
        );
    } else {
        println!("session {} keys in {}", g.session_id, g.dir.display());
        for f in &g.files {
            println!("  {}", f.display());
        }
        if a.clients.is_some() {
            println!(
                "give each server and client: ca.crt, session-id and its own NAME.crt and NAME.key (keep the .key files private); revoke a client by adding its name to {}",
                g.dir.join("revoked").display()
            );
        } else {
            println!(
                "give party R: ca.crt, session-id, party-R.crt and party-R.key (keep the .key files private)"
            );
        }
    }
    Ok(())
}
