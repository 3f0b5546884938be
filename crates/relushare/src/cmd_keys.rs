//! `relushare keys`: a fresh session CA and certificates/keys for parties 0, 1 and 2.
//!
//! The CA key is discarded after signing; private keys are written with mode 0600 through a
//! temporary file and a rename. Give each party `ca.crt`, `session-id` and its own
//! `party-R.crt`/`party-R.key`.

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
    /// Replace the keys of an earlier session in the same directory.
    #[arg(long)]
    pub force: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let g = pki::generate(&a.out, a.session_id.as_deref(), a.force)?;
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
        println!(
            "give party R: ca.crt, session-id, party-R.crt and party-R.key (keep the .key files private)"
        );
    }
    Ok(())
}
