//! The rule set in force, and swapping in a new one.
//!
//! A reload runs read → parse → validate (collecting every problem) and
//! build → check that nothing non-reloadable changed → atomic swap, in that
//! order;
//! any failure leaves the current rule set in force and is recorded as the
//! last reload error. Readers never block and never see half a rule set: the
//! current set lives in an [`ArcSwap`], a reader takes an `Arc` snapshot and
//! keeps using that one version for as long as it holds it (so an in-flight
//! request finishes under the version it started with).
//!
//! Not reloadable (refused with a clear message, restart to apply): the
//! `broker` of a cell that exists in both versions, because its broker
//! connection or embedded store was built at start-up.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::diag::Diagnostics;
use crate::diff::RulesDiff;
use crate::error::Error;
use crate::load::Sources;
use crate::ruleset::{Location, RuleSet};

/// What a reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// A new version is in force.
    Swapped { version: u64, diff: RulesDiff },
    /// The sources hash the same as the rule set in force; nothing was done.
    Unchanged { version: u64 },
}

/// The outcome of the latest failed reload, cleared by a successful one.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
}

/// One counter per reload outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReloadCounts {
    pub swapped: u64,
    pub unchanged: u64,
    pub invalid: u64,
    pub not_reloadable: u64,
    pub io_error: u64,
}

#[derive(Debug, Default)]
struct Counters {
    swapped: AtomicU64,
    unchanged: AtomicU64,
    invalid: AtomicU64,
    not_reloadable: AtomicU64,
    io_error: AtomicU64,
}

/// The rule set in force. Cheap to share: wrap it in an `Arc`.
#[derive(Debug)]
pub struct RulesHandle {
    path: PathBuf,
    /// ArcSwap, not RwLock: readers are on every request and must never wait
    /// for a reload, and a reload must never wait for a slow reader.
    current: ArcSwap<RuleSet>,
    /// Serialises reloads (the file watcher, SIGHUP and an admin call may
    /// race), so versions are handed out once and in order. Never taken by
    /// readers.
    reload_lock: Mutex<()>,
    /// Mutex: written once per reload, read by the admin API; never on the
    /// message path.
    status: Mutex<ReloadStatus>,
    counters: Counters,
}

impl RulesHandle {
    /// Loads `path` as version 1. Fails with every problem if it is invalid.
    pub fn open(path: &Path) -> Result<RulesHandle, Error> {
        let rules = Sources::read(path)?.compile(1)?;
        Ok(RulesHandle {
            path: path.to_owned(),
            current: ArcSwap::from_pointee(rules),
            reload_lock: Mutex::new(()),
            status: Mutex::new(ReloadStatus::default()),
            counters: Counters::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The rule set in force. Lock-free; hold the `Arc` for the duration of
    /// one request so the request sees one version.
    pub fn current(&self) -> Arc<RuleSet> {
        self.current.load_full()
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn counts(&self) -> ReloadCounts {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ReloadCounts {
            swapped: get(&c.swapped),
            unchanged: get(&c.unchanged),
            invalid: get(&c.invalid),
            not_reloadable: get(&c.not_reloadable),
            io_error: get(&c.io_error),
        }
    }

    /// Re-reads the sources and swaps them in if they are valid. On error
    /// the rule set in force stays, and the error is recorded.
    pub fn reload(&self) -> Result<ReloadOutcome, Error> {
        let _serial = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current.load_full();
        let result = self.try_reload(&old);
        let counter = match &result {
            Ok(ReloadOutcome::Swapped { .. }) => &self.counters.swapped,
            Ok(ReloadOutcome::Unchanged { .. }) => &self.counters.unchanged,
            Err(Error::Invalid(_)) => &self.counters.invalid,
            Err(Error::NotReloadable(_)) => &self.counters.not_reloadable,
            // Io, and nothing else can come out of a reload.
            Err(_) => &self.counters.io_error,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.status.lock() {
            match &result {
                Ok(_) => *s = ReloadStatus::default(),
                Err(e) => {
                    s.last_error = Some(e.to_string());
                    s.last_error_at = Some(SystemTime::now());
                }
            }
        }
        match &result {
            Ok(ReloadOutcome::Swapped { version, diff }) => {
                tracing::info!(version, changes = diff.len(), "rules reloaded:\n{diff}")
            }
            Ok(ReloadOutcome::Unchanged { version }) => {
                tracing::debug!(version, "rules unchanged")
            }
            Err(e) => tracing::warn!(
                version = old.version(),
                "rules reload rejected, keeping the rules in force:\n{e}"
            ),
        }
        result
    }

    fn try_reload(&self, old: &RuleSet) -> Result<ReloadOutcome, Error> {
        let sources = Sources::read(&self.path)?;
        if sources.sha256 == old.meta().sha256 {
            return Ok(ReloadOutcome::Unchanged {
                version: old.version(),
            });
        }
        let new = sources.compile(old.version() + 1)?;
        not_reloadable(old, &new)?;
        let diff = RulesDiff::between(old, &new);
        let version = new.version();
        self.current.store(Arc::new(new));
        Ok(ReloadOutcome::Swapped { version, diff })
    }
}

/// Refuses changes that need a restart.
fn not_reloadable(old: &RuleSet, new: &RuleSet) -> Result<(), Error> {
    let d = restart_required(old, new);
    if d.is_empty() {
        Ok(())
    } else {
        Err(Error::NotReloadable(d))
    }
}

/// The changes from `old` to `new` that a running cellgate refuses to
/// reload, located in `new`'s source.
pub fn restart_required(old: &RuleSet, new: &RuleSet) -> Diagnostics {
    let mut d = Vec::new();
    for (_, c) in new.cells() {
        let Some(prev) = old.cell_id(&c.name).map(|id| old.cell(id)) else {
            continue;
        };
        if prev.broker != c.broker {
            d.push(crate::Diagnostic {
                file: c.declared_at.file.clone(),
                line: c.declared_at.line,
                col: c.declared_at.col,
                message: format!(
                    "cell {}: broker cannot change at run time ({} -> {}); restart cellgate to \
                     apply it",
                    c.name, prev.broker, c.broker
                ),
            });
        }
    }
    if old.telemetry_changed(new) {
        let at = new.telemetry().declared_at.clone().or_else(|| {
            old.telemetry().declared_at.as_ref().map(|_| Location {
                file: new.meta().source.display().to_string().into(),
                line: 1,
                col: 1,
            })
        });
        if let Some(at) = at {
            d.push(crate::Diagnostic {
                file: at.file,
                line: at.line,
                col: at.col,
                message: "telemetry cannot change at run time; restart cellgate to apply it"
                    .to_owned(),
            });
        }
    }
    Diagnostics(d)
}
