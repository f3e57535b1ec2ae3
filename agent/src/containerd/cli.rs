//! `shoal-agent containerd-config`: flags, and the exit codes an init container or an
//! operator reads (0 written or already so, 2 the configuration cannot be wired
//! (agent or containerd config; one line on stderr says why), 1 a file could not be
//! written).

use std::path::PathBuf;
use std::process::ExitCode;

use super::{Wiring, WiringError};
use crate::config::Config;

#[derive(clap::Args, Debug)]
pub struct ContainerdArgs {
    /// The agent's TOML configuration (its [[mirrors]] with `registry = "HOST"`).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// containerd's config.toml, read for the registry config_path (overrides
    /// containerd.config_file).
    #[arg(long)]
    pub containerd_config: Option<PathBuf>,
    /// Write under this hosts directory instead of containerd's config_path
    /// (overrides containerd.certs_dir).
    #[arg(long)]
    pub certs_dir: Option<PathBuf>,
    /// The URL containerd reaches this agent at (overrides containerd.agent_url).
    #[arg(long)]
    pub agent_url: Option<String>,
}

/// Runs the command; prints one line per registry (`created|updated|unchanged PATH`).
pub fn run(a: ContainerdArgs) -> ExitCode {
    let mut overrides = Vec::new();
    if let Some(p) = a.containerd_config {
        overrides.push(("containerd.config_file", p.display().to_string()));
    }
    if let Some(p) = a.certs_dir {
        overrides.push(("containerd.certs_dir", p.display().to_string()));
    }
    if let Some(u) = a.agent_url {
        overrides.push(("containerd.agent_url", u));
    }
    let cfg = match Config::load(a.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shoal-agent containerd-config: {e}");
            return ExitCode::from(2);
        }
    };
    match Wiring::write_all(&cfg) {
        Ok(reports) => {
            for r in reports {
                let what = match r.outcome {
                    super::hosts::Written::Created => "created",
                    super::hosts::Written::Updated => "updated",
                    super::hosts::Written::Unchanged => "unchanged",
                };
                println!("{what} {}", r.path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shoal-agent containerd-config: {e}");
            match e {
                WiringError::Write { .. } => ExitCode::FAILURE,
                _ => ExitCode::from(2),
            }
        }
    }
}
