//! URL rules: which mode handles a URL, compiled once from `[[rules]]`.

use regex::Regex;

use crate::config::{Mode, Rule};

/// The compiled rules. First match wins.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<(Regex, Mode, u64, bool)>,
    default_mode: Mode,
}

impl Rules {
    /// `rules` were validated by `Config::validate`; a pattern that still fails to
    /// compile is skipped with an error log. `default_mode` applies when none matches.
    pub fn new(rules: &[Rule], default_mode: Mode) -> Self {
        let rules = rules
            .iter()
            .filter_map(|r| match Regex::new(&r.pattern) {
                Ok(re) => Some((re, r.mode, r.min_size.as_u64(), r.immutable)),
                Err(e) => {
                    tracing::error!(pattern = %r.pattern, error = %e, "rule skipped");
                    None
                }
            })
            .collect();
        Self {
            rules,
            default_mode,
        }
    }

    /// Mode and minimum size for `url`.
    pub fn decide(&self, url: &str) -> (Mode, u64) {
        self.rules
            .iter()
            .find(|(re, ..)| re.is_match(url))
            .map(|(_, m, s, _)| (*m, *s))
            .unwrap_or((self.default_mode, 0))
    }

    /// Whether the first rule matching `url` declares it immutable (see
    /// `Rule::immutable`); false when none matches.
    pub fn immutable(&self, url: &str) -> bool {
        self.rules
            .iter()
            .find(|(re, ..)| re.is_match(url))
            .is_some_and(|r| r.3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytesize::ByteSize;

    #[test]
    fn first_match_wins() {
        let r = Rules::new(
            &[
                Rule {
                    pattern: r"\.deb$".into(),
                    mode: Mode::P2p,
                    min_size: ByteSize::mib(1),
                    immutable: true,
                },
                Rule {
                    pattern: r"^http://private/".into(),
                    mode: Mode::Pass,
                    min_size: ByteSize::b(0),
                    immutable: false,
                },
            ],
            Mode::Cache,
        );
        assert_eq!(r.decide("http://a/x.deb"), (Mode::P2p, 1 << 20));
        assert_eq!(r.decide("http://private/x"), (Mode::Pass, 0));
        assert_eq!(r.decide("http://a/y"), (Mode::Cache, 0));
        assert!(r.immutable("http://a/x.deb"));
        assert!(!r.immutable("http://private/x.deb.txt"));
        assert!(!r.immutable("http://a/y"));
    }
}
