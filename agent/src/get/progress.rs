//! Download progress on stderr: a bar with rate and ETA on a terminal (indicatif),
//! one plain line every few seconds otherwise (logs, CI), or nothing (`--quiet`).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown; `Auto` picks `Bar` when stderr is a terminal, else `Lines`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Auto,
    Bar,
    Lines,
    Quiet,
}

/// Time between two plain progress lines.
const LINE_EVERY: Duration = Duration::from_secs(2);

/// The progress display of one download.
#[derive(Debug)]
pub enum Progress {
    Bar(ProgressBar),
    Lines {
        name: String,
        total: Option<u64>,
        done: u64,
        /// Bytes already in the `.part` file when this run started (not counted in
        /// the rate).
        resumed: u64,
        start: Instant,
        last: Instant,
    },
    Quiet,
}

impl Progress {
    /// Starts showing a download of `name` of `total` bytes (if known), `done` of
    /// which are already there (a resume).
    pub fn start(mode: Mode, name: &str, total: Option<u64>, done: u64) -> Self {
        let mode = match mode {
            Mode::Auto if std::io::stderr().is_terminal() => Mode::Bar,
            Mode::Auto => Mode::Lines,
            m => m,
        };
        match mode {
            Mode::Quiet => Progress::Quiet,
            Mode::Bar => {
                let bar = match total {
                    Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()),
                    None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
                };
                let template = if total.is_some() {
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
                } else {
                    "{msg} {spinner} {bytes} {bytes_per_sec}"
                };
                if let Ok(style) = ProgressStyle::with_template(template) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_message(name.to_owned());
                // The rate and ETA count this run's bytes only.
                bar.set_position(done);
                bar.reset_elapsed();
                bar.reset_eta();
                Progress::Bar(bar)
            }
            Mode::Lines | Mode::Auto => {
                let now = Instant::now();
                if done > 0 {
                    eprintln!("get {name}: resuming at {}", ByteSize::b(done));
                }
                Progress::Lines {
                    name: name.to_owned(),
                    total,
                    done,
                    resumed: done,
                    start: now,
                    last: now,
                }
            }
        }
    }

    /// Counts `n` more bytes written.
    pub fn advance(&mut self, n: u64) {
        match self {
            Progress::Bar(b) => b.inc(n),
            Progress::Lines { done, last, .. } => {
                *done += n;
                if last.elapsed() >= LINE_EVERY {
                    *last = Instant::now();
                    self.line();
                }
            }
            Progress::Quiet => {}
        }
    }

    /// Ends the display after a successful download.
    pub fn finish(&mut self) {
        match self {
            // The summary line printed after it says the same.
            Progress::Bar(b) => b.finish_and_clear(),
            Progress::Lines { .. } => self.line(),
            Progress::Quiet => {}
        }
    }

    /// Ends the display after a failure (the error is printed by the caller).
    pub fn abandon(&mut self) {
        if let Progress::Bar(b) = self {
            b.abandon();
        }
    }

    fn line(&self) {
        let Progress::Lines {
            name,
            total,
            done,
            resumed,
            start,
            ..
        } = self
        else {
            return;
        };
        let secs = start.elapsed().as_secs_f64().max(0.001);
        let rate = (done - resumed) as f64 / secs;
        let mut s = format!("get {name}: {}", ByteSize::b(*done));
        if let Some(t) = total {
            let pct = if *t == 0 { 100 } else { done * 100 / t };
            s += &format!(" of {} ({pct}%)", ByteSize::b(*t));
            if rate > 0.0 && t > done {
                s += &format!(", ETA {}s", ((t - done) as f64 / rate).ceil());
            }
        }
        s += &format!(", {}/s", ByteSize::b(rate as u64));
        let mut e = std::io::stderr().lock();
        let _ = writeln!(e, "{s}");
    }
}
