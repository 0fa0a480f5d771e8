//! Reading rules from a file or a directory: read → parse → validate → build.
//!
//! A rules *directory* is every `*.yaml` / `*.yml` file directly in it, in
//! name order; other files are ignored. The rule set's sha256 is the hash of
//! the file's bytes for a single file (so it matches `sha256sum`), and of
//! each file's name (without its directory) and bytes in order, each framed
//! by its length, for a directory.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::diag::{Diagnostics, Source};
use crate::error::Error;
use crate::ruleset::{RuleSet, RulesMeta};
use crate::validate::{self, Doc};

/// The texts a rule set is built from, as read from disk.
#[derive(Debug, Clone)]
pub struct Sources {
    pub path: PathBuf,
    /// (name shown in diagnostics, text), in load order.
    pub files: Vec<(String, String)>,
    pub sha256: String,
}

/// Largest rules file accepted. Far above any real topology; it bounds the
/// time and memory a reload may take while it holds the reload lock.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

impl Sources {
    /// Reads `path`, a file or a directory of YAML files. In a directory,
    /// an entry that cannot be read fails the whole read: loading the
    /// readable rest could silently drop tenants or cells.
    pub fn read(path: &Path) -> Result<Sources, Error> {
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let mut files = Vec::new();
        let mut hasher = Sha256::new();
        if path.is_dir() {
            let mut names = Vec::new();
            for entry in std::fs::read_dir(path).map_err(io)? {
                let p = entry.map_err(io)?.path();
                if is_yaml(&p) {
                    names.push(p);
                }
            }
            names.sort();
            for p in names {
                let text = read_file(&p)?;
                // The file name, not the path: the hash must not depend on
                // how the directory was spelt on the command line. Lengths
                // frame each part so no two directories hash alike.
                let file_name = p.file_name().map(|f| f.to_string_lossy().into_owned());
                let file_name = file_name.unwrap_or_default();
                hasher.update((file_name.len() as u64).to_le_bytes());
                hasher.update(file_name.as_bytes());
                hasher.update((text.len() as u64).to_le_bytes());
                hasher.update(text.as_bytes());
                files.push((p.display().to_string(), text));
            }
        } else {
            let text = read_file(path)?;
            hasher.update(text.as_bytes());
            files.push((path.display().to_string(), text));
        }
        Ok(Sources {
            path: path.to_owned(),
            files,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    /// In-memory sources, for tests and tools: one file named `name`.
    pub fn from_text(name: &str, text: &str) -> Sources {
        Sources {
            path: PathBuf::from(name),
            files: vec![(name.to_owned(), text.to_owned())],
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
        }
    }

    /// Parses and validates into a rule set stamped with `version`.
    pub fn compile(&self, version: u64) -> Result<RuleSet, Error> {
        let mut docs = Vec::with_capacity(self.files.len());
        let mut problems = Vec::new();
        for (name, text) in &self.files {
            let src = Source::new(name, text);
            match serde_yaml::from_str(text) {
                Ok(raw) => docs.push(Doc { src, raw }),
                Err(e) => problems.push(src.serde_error(&e)),
            }
        }
        if self.files.is_empty() {
            problems.push(
                Source::new(&self.path.display().to_string(), "")
                    .at("", "no rules: the directory holds no .yaml or .yml file"),
            );
        }
        if !problems.is_empty() {
            return Err(Error::Invalid(Diagnostics(problems)));
        }
        let meta = RulesMeta {
            version,
            sha256: self.sha256.clone(),
            loaded_at: SystemTime::now(),
            source: self.path.clone(),
        };
        validate::compile(&docs, meta).map_err(Error::Invalid)
    }
}

/// Reads one rules file: a regular file (or a link to one) of at most
/// [`MAX_FILE_BYTES`], in UTF-8.
fn read_file(p: &Path) -> Result<String, Error> {
    let err = |source| Error::Io {
        path: p.to_owned(),
        source,
    };
    let meta = std::fs::metadata(p).map_err(err)?;
    if !meta.is_file() {
        return Err(err(std::io::Error::other("not a regular file")));
    }
    if meta.len() > MAX_FILE_BYTES {
        let msg = format!("{} bytes, over the limit of {MAX_FILE_BYTES}", meta.len());
        return Err(err(std::io::Error::other(msg)));
    }
    std::fs::read_to_string(p).map_err(err)
}

fn is_yaml(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

/// Reads and compiles `path` as version 1. For tools and tests; a running
/// gateway uses [`crate::RulesHandle`].
pub fn load(path: &Path) -> Result<RuleSet, Error> {
    Sources::read(path)?.compile(1)
}
