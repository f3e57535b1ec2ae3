//! The flags of `shoal-agent get` and `shoal-agent status`, and running them to an
//! exit code (the binary only dispatches here). Errors are one line on stderr,
//! `shoal-agent get: ...`, with the exit code of [`GetError::exit_code`].

use std::path::PathBuf;
use std::process::ExitCode;

use super::progress::Mode;
use super::{Endpoint, Expected, GetError, Options, default_out, parse_url};

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The URL: absolute http:// or https://, or a path on one of the agent's mirrors
    /// (/m/NAME/..., e.g. a registry blob). With --prefetch: one or more URLs.
    #[arg(required = true)]
    urls: Vec<String>,
    /// Output file (default: the URL's last path segment). FILE.part holds the bytes
    /// until the download is complete and verified.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// The agent's proxy listener.
    #[arg(long, default_value = "http://127.0.0.1:7480")]
    agent: String,
    /// Verify the download: sha256:HEX or blake3:HEX. A mismatch deletes it (exit 6).
    #[arg(long)]
    digest: Option<String>,
    /// No progress output.
    #[arg(short, long)]
    quiet: bool,
    /// Run a one-shot agent in this process instead of using the node's.
    #[arg(long, conflicts_with_all = ["agent", "prefetch"])]
    standalone: bool,
    /// With --standalone: the agent configuration (tracker, TLS, rules).
    #[arg(long, short, requires = "standalone")]
    config: Option<PathBuf>,
    /// With --standalone: the cache directory (default: a temporary one, removed after).
    #[arg(long, requires = "standalone")]
    cache_dir: Option<PathBuf>,
    /// Put the URLs into the node's cache (POST /v1/prefetch on --admin); no file.
    #[arg(long, conflicts_with_all = ["output", "digest"])]
    prefetch: bool,
    /// The agent's admin listener (for --prefetch).
    #[arg(long, default_value = "http://127.0.0.1:7481")]
    admin: String,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The agent's admin listener.
    #[arg(long, default_value = "http://127.0.0.1:7481")]
    admin: String,
}

/// Runs `shoal-agent get`.
pub fn get(a: GetArgs) -> ExitCode {
    run("get", async move {
        if a.prefetch {
            return prefetch(&a).await;
        }
        let [url] = a.urls.as_slice() else {
            return Err(GetError::Usage(
                "one URL per download (several only with --prefetch)".into(),
            ));
        };
        let url = parse_url(url)?;
        let digest = match &a.digest {
            Some(d) => Some(
                d.parse::<Expected>()
                    .map_err(|e| GetError::Usage(e.to_string()))?,
            ),
            None => None,
        };
        let o = Options {
            out: a.output.clone().unwrap_or_else(|| default_out(&url)),
            url,
            agent: Endpoint::parse(&a.agent)?,
            digest,
            progress: if a.quiet { Mode::Quiet } else { Mode::Auto },
        };
        let report = if a.standalone {
            super::standalone::run(a.config.as_deref(), a.cache_dir.clone(), &o).await?
        } else {
            super::download(&o).await?
        };
        if !a.quiet {
            eprintln!(
                "get: wrote {} ({} bytes{}{})",
                o.out.display(),
                report.bytes,
                match report.resumed_from {
                    0 => String::new(),
                    n => format!(", resumed at {n}"),
                },
                report
                    .cache
                    .map(|c| format!(", cache {c}"))
                    .unwrap_or_default()
            );
        }
        Ok(())
    })
}

async fn prefetch(a: &GetArgs) -> Result<(), GetError> {
    for u in &a.urls {
        parse_url(u)?;
    }
    let answer = super::prefetch::prefetch(&Endpoint::parse(&a.admin)?, &a.urls).await?;
    let refused: Vec<_> = answer.urls.iter().filter(|e| !e.accepted).collect();
    for e in &refused {
        eprintln!(
            "get --prefetch: refused {}: {}",
            e.url,
            e.reason.as_deref().unwrap_or("no reason given")
        );
    }
    if !a.quiet {
        eprintln!(
            "get --prefetch: {} of {} URLs accepted; the agent fetches them now",
            answer.accepted,
            answer.urls.len()
        );
    }
    match refused.first() {
        None => Ok(()),
        Some(e) => Err(GetError::Client {
            url: e.url.clone(),
            status: http::StatusCode::BAD_REQUEST,
            message: format!("{} URL(s) refused", refused.len()),
        }),
    }
}

/// Runs `shoal-agent status`.
pub fn status(a: StatusArgs) -> ExitCode {
    run("status", async move {
        let s = super::status::status(&Endpoint::parse(&a.admin)?).await?;
        print!("{s}");
        Ok(())
    })
}

fn run(what: &str, f: impl Future<Output = Result<(), GetError>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoal-agent {what}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal-agent {what}: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
