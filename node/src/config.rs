//! The layered configuration loader: built-in defaults < a TOML file < environment
//! variables (`PREFIX__SECTION__KEY`) < command-line overrides. Each process
//! deserializes the result into its own typed `Config` and validates it.

use std::collections::HashMap;
use std::path::Path;

/// Where the layers come from.
#[derive(Debug, Clone, Copy, Default)]
pub struct Layers<'a> {
    /// The TOML file; when given it must exist.
    pub file: Option<&'a Path>,
    /// `("section.key", value)` pairs from command-line flags, the top layer.
    pub overrides: &'a [(&'a str, String)],
    /// The environment to read instead of the process's (tests).
    pub env: Option<&'a HashMap<String, String>>,
}

/// Builds the layered source for `prefix` (e.g. `SHOAL_AGENT`: the variable
/// `SHOAL_AGENT__CACHE__DIR` sets `cache.dir`). Keys in `list_keys` are parsed as
/// comma-separated lists from the environment.
pub fn layered(
    prefix: &str,
    list_keys: &[&str],
    layers: Layers<'_>,
) -> Result<config::Config, config::ConfigError> {
    let mut b = config::Config::builder();
    if let Some(f) = layers.file {
        b = b.add_source(
            config::File::from(f)
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    let mut e = config::Environment::with_prefix(prefix)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true);
    if !list_keys.is_empty() {
        e = e.list_separator(",");
        for k in list_keys {
            e = e.with_list_parse_key(k);
        }
    }
    if let Some(env) = layers.env {
        e = e.source(Some(env.clone()));
    }
    b = b.add_source(e);
    for (k, v) in layers.overrides {
        b = b.set_override(*k, v.clone())?;
    }
    b.build()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn layers_stack_in_order() {
        let dir = std::env::temp_dir().join(format!("shoal-node-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[a]\nx = 1\ny = 1\nz = 1\nw = 1\n").unwrap();
        let env: HashMap<String, String> = [
            ("T__A__Y".to_owned(), "2".to_owned()),
            ("T__A__Z".to_owned(), "2".to_owned()),
            ("T__A__L".to_owned(), "p,q".to_owned()),
        ]
        .into();
        let overrides = [("a.z", "3".to_owned())];
        let c = layered(
            "T",
            &["a.l"],
            Layers {
                file: Some(&file),
                overrides: &overrides,
                env: Some(&env),
            },
        )
        .unwrap();
        assert_eq!(c.get_int("a.x").unwrap(), 1);
        assert_eq!(c.get_int("a.y").unwrap(), 2, "env over file");
        assert_eq!(c.get_int("a.z").unwrap(), 3, "override over env");
        let l: Vec<String> = c.get("a.l").unwrap();
        assert_eq!(l, ["p", "q"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_named_file_must_exist() {
        let missing = Path::new("/nonexistent/shoal.toml");
        let layers = Layers {
            file: Some(missing),
            ..Layers::default()
        };
        assert!(layered("T", &[], layers).is_err());
    }
}
