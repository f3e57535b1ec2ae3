//! A fresh filesystem for each run's work directory: a sparse image file formatted as
//! ext4 with its default journal, on a loop device with direct I/O (so the image's
//! bytes are not cached twice), mounted at the work directory and removed at teardown.
//!
//! Why: every system writes N copies of the object (caches, client outputs) and the
//! harness deletes them afterwards. On this benchmark's reference machine the root
//! filesystem is ext4 *without* a journal, where the inode allocator skips every inode
//! deleted in the last five minutes whose table block is still dirty, reading its
//! block for each one. A run right after another that deleted thousands of files then
//! paid ~1 ms per file created (7 % of the machine in a Shoal S1 run, which creates a
//! file per chunk), and a system's figures depended on what ran before it. A node's
//! disk in production has a journal and is not shared with another benchmark run.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::cleanup::Registry;
use super::proc::run;

/// A mounted image, for [`Registry`] teardown.
#[derive(Debug, Clone)]
pub struct Mount {
    pub dir: PathBuf,
    pub device: String,
    pub image: PathBuf,
}

/// Creates a `size`-byte sparse image next to `dir`, formats it, mounts it at `dir`
/// (which must exist and be empty) and registers it for teardown.
pub fn mount_fresh(dir: &Path, size: u64, registry: &Registry) -> Result<()> {
    let image = dir.with_extension("img");
    let file =
        std::fs::File::create(&image).with_context(|| format!("creating {}", image.display()))?;
    file.set_len(size)
        .with_context(|| format!("sizing {}", image.display()))?;
    drop(file);
    let img = path_str(&image)?;
    let res = (|| {
        // No lazy initialisation: a kernel thread zeroing inode tables during the run
        // would be charged to whichever system runs then.
        run(
            None,
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
                img,
            ],
        )?;
        let device = run(
            None,
            "losetup",
            &["--find", "--show", "--direct-io=on", img],
        )?
        .trim()
        .to_owned();
        if !device.starts_with("/dev/") {
            bail!("losetup printed {device:?}");
        }
        if let Err(e) = run(None, "mount", &[&device, path_str(dir)?]) {
            let _ = run(None, "losetup", &["-d", &device]);
            return Err(e);
        }
        Ok(device)
    })();
    match res {
        Ok(device) => {
            registry.add_mount(Mount {
                dir: dir.to_path_buf(),
                device,
                image,
            });
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&image);
            Err(e)
        }
    }
}

/// Unmounts, detaches and deletes; returns whether `dir` is no longer a mount point.
pub fn unmount(m: &Mount) -> bool {
    let Ok(dir) = path_str(&m.dir) else {
        return false;
    };
    if run(None, "umount", &[dir]).is_err() {
        // Something still holds a file open; detach now, the kernel finishes later.
        let _ = run(None, "umount", &["-l", dir]);
    }
    let _ = run(None, "losetup", &["-d", &m.device]);
    let _ = std::fs::remove_file(&m.image);
    !is_mounted(&m.dir)
}

fn is_mounted(dir: &Path) -> bool {
    let dir = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(&*dir))
        })
        .unwrap_or(false)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}
