//! The model catalog: short names for hub repos, built into the binary from
//! `models/catalog.toml`.

use std::sync::OnceLock;

use serde::Deserialize;

/// One catalog model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The short name, e.g. `safeguard-20b`.
    pub alias: String,
    /// The hub repo id, `org/name`.
    pub repo: String,
    /// Approximate download size in GB (10^9 bytes).
    pub size_gb: f64,
    /// Quantization as `safeguard ls` shows it.
    pub quantization: String,
    pub description: String,
    /// The model commands use when `-m` is not given.
    #[serde(default)]
    pub default: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    model: Vec<Entry>,
}

const CATALOG: &str = include_str!("../../models/catalog.toml");

/// Every catalog model, in file order.
pub fn entries() -> &'static [Entry] {
    static ENTRIES: OnceLock<Vec<Entry>> = OnceLock::new();
    ENTRIES.get_or_init(|| {
        // The file is part of the binary and checked by a unit test, so a parse
        // failure here is a build defect, not a user error.
        let file: File = toml::from_str(CATALOG).expect("models/catalog.toml is valid");
        file.model
    })
}

/// The catalog model called `alias`.
pub fn find(alias: &str) -> Option<&'static Entry> {
    entries().iter().find(|e| e.alias == alias)
}

/// The catalog model for a hub repo id (compared case-insensitively, as the hub does).
pub fn find_repo(repo: &str) -> Option<&'static Entry> {
    entries().iter().find(|e| e.repo.eq_ignore_ascii_case(repo))
}

/// The model commands use when `-m` is not given (`safeguard-20b`).
pub fn default_model() -> &'static Entry {
    entries()
        .iter()
        .find(|e| e.default)
        .expect("models/catalog.toml marks one default model")
}

/// The aliases, comma-separated, for error messages.
pub fn alias_list() -> String {
    entries()
        .iter()
        .map(|e| e.alias.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_parses_with_one_default_and_valid_repo_ids() {
        let entries = entries();
        assert!(entries.len() >= 4);
        assert_eq!(entries.iter().filter(|e| e.default).count(), 1);
        assert_eq!(default_model().alias, "safeguard-20b");
        assert_eq!(
            find("safeguard-20b").unwrap().repo,
            "lmstudio-community/gpt-oss-safeguard-20b-MLX-MXFP4"
        );
        for e in entries {
            assert!(super::super::valid_repo_id(&e.repo), "{}", e.repo);
            assert!(
                !e.alias.contains('/'),
                "alias {} must not look like a repo id",
                e.alias
            );
            assert!(e.size_gb > 0.0);
        }
        let mut aliases: Vec<_> = entries.iter().map(|e| &e.alias).collect();
        aliases.sort();
        aliases.dedup();
        assert_eq!(aliases.len(), entries.len(), "aliases are unique");
    }
}
