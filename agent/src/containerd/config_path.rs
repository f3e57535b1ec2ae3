//! Where containerd looks for `hosts.toml` files: the CRI registry `config_path` in
//! containerd's own `config.toml`.
//!
//! Read from the tables containerd itself uses: 2.x
//! `plugins."io.containerd.cri.v1.images".registry.config_path`, 1.x (config
//! version 2) `plugins."io.containerd.grpc.v1.cri".registry.config_path`, and 1.x
//! config version 1's short `plugins.cri.registry.config_path`. containerd accepts a
//! `:`-separated list (every directory is returned, in order). What this cannot
//! know: drop-in files (`imports = […]`) are not followed, and `ctr --hosts-dir`
//! (which bypasses the CRI setting) is invisible here.

use std::path::PathBuf;

/// Why containerd's config did not give a hosts directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigPathError {
    #[error("not TOML: {0}")]
    Toml(String),
    #[error(
        "registry config_path is not set (containerd 1.x: [plugins.\"io.containerd.grpc.v1.cri\".registry] config_path = \"/etc/containerd/certs.d\"; 2.x: [plugins.\"io.containerd.cri.v1.images\".registry]), so containerd ignores hosts.toml files: set it and restart containerd once"
    )]
    Unset,
}

/// The tables, outermost first, that may hold `registry.config_path`.
const PLUGINS: [&str; 3] = [
    "io.containerd.cri.v1.images",
    "io.containerd.grpc.v1.cri",
    "cri",
];

/// The directories of the registry `config_path` in containerd config `text` (at
/// least one).
pub fn config_path(text: &str) -> Result<Vec<PathBuf>, ConfigPathError> {
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigPathError::Toml(e.message().to_owned()))?;
    let plugins = doc.get("plugins").and_then(toml::Value::as_table);
    PLUGINS
        .iter()
        .find_map(|p| {
            plugins?
                .get(*p)?
                .get("registry")?
                .get("config_path")?
                .as_str()
        })
        .map(|s| {
            s.split(':')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .collect::<Vec<_>>()
        })
        .filter(|d| !d.is_empty())
        .ok_or(ConfigPathError::Unset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_major_versions() {
        let v1 = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n";
        assert_eq!(
            config_path(v1).unwrap(),
            vec![PathBuf::from("/etc/containerd/certs.d")]
        );
        let v2 = "version = 3\n[plugins]\n  [plugins.'io.containerd.cri.v1.images']\n    [plugins.'io.containerd.cri.v1.images'.registry]\n      config_path = '/etc/containerd/certs.d:/other'\n";
        assert_eq!(
            config_path(v2).unwrap(),
            vec![
                PathBuf::from("/etc/containerd/certs.d"),
                PathBuf::from("/other")
            ]
        );
        let old = "[plugins.cri.registry]\nconfig_path = \"/x\"\n";
        assert_eq!(config_path(old).unwrap(), vec![PathBuf::from("/x")]);
    }

    #[test]
    fn unset_or_broken() {
        // The stock Debian/Ubuntu config: no CRI registry section at all.
        assert_eq!(config_path(""), Err(ConfigPathError::Unset));
        let mirrors_only = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://x\"]\n";
        assert_eq!(config_path(mirrors_only), Err(ConfigPathError::Unset));
        let empty = "[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"\"\n";
        assert_eq!(config_path(empty), Err(ConfigPathError::Unset));
        assert!(matches!(
            config_path("version = "),
            Err(ConfigPathError::Toml(_))
        ));
    }
}
