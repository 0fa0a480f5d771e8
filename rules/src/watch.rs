//! Reload on file changes (debounced) and on SIGHUP.
//!
//! The watcher watches the rules file's *directory*, not the file: editors
//! and config-management tools replace a file by renaming a new one over it,
//! which a watch on the old inode would miss, and Kubernetes swaps a
//! ConfigMap by re-pointing a `..data` symlink, whose events do not name the
//! file at all. So any event in the directory triggers a reload; one that
//! finds the same bytes is a no-op (same sha256, no new version). Access
//! events (open, read, close without write) are ignored: a reload reads the
//! file, and counting its own read as a change would reload forever. Events
//! are debounced (a reload runs once the directory has been quiet for the
//! debounce period) so a save that writes several times triggers one reload,
//! and the reload itself runs on the blocking pool (it reads files).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::reload::RulesHandle;

/// How the watcher behaves.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Quiet time after the last file event before reloading.
    pub debounce: Duration,
    /// Also reload on SIGHUP.
    pub sighup: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            debounce: Duration::from_millis(250),
            sighup: true,
        }
    }
}

/// A running watcher; dropping it stops watching.
#[derive(Debug)]
pub struct Watcher {
    task: JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// Long on purpose: setting up the watch, the signal and the task belong
// together, and each step maps its own error.
/// Starts watching `handle`'s source. Must be called inside a tokio runtime.
pub fn spawn(handle: Arc<RulesHandle>, opts: WatchOptions) -> Result<Watcher, Error> {
    let path = handle.path().to_owned();
    let err = |reason: String| Error::Watch {
        path: path.clone(),
        reason,
    };
    let dir = if path.is_dir() {
        path.clone()
    } else {
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
        dir.unwrap_or(Path::new(".")).to_owned()
    };
    // Unbounded is fine: one message per file event, drained by the task,
    // and events come from one rules directory.
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        match res {
            Ok(ev) if matches!(ev.kind, EventKind::Access(_)) => return,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "rules watcher error; reloading to be safe"),
        }
        let _ = tx.send(());
    })
    .map_err(|e| err(e.to_string()))?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| err(e.to_string()))?;
    let mut hup = if opts.sighup {
        Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| err(format!("SIGHUP: {e}")))?,
        )
    } else {
        None
    };
    let debounce = opts.debounce;
    let task = tokio::spawn(async move {
        // The watcher lives as long as the task: dropping it stops the watch.
        let _watcher = watcher;
        // A change between loading the rules and arming the watch has made
        // no event: check once now.
        reload(&handle, "start").await;
        // A file change waits until the directory has been quiet for
        // `debounce` (the sleep restarts on every event); SIGHUP reloads
        // at once.
        let mut pending = false;
        loop {
            let quiet = async {
                if pending {
                    tokio::time::sleep(debounce).await
                } else {
                    std::future::pending().await
                }
            };
            let why = tokio::select! {
                got = rx.recv() => match got {
                    Some(()) => { pending = true; continue }
                    None => return,
                },
                _ = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
                () = quiet => "file change",
            };
            pending = false;
            tracing::debug!(why, "reloading rules");
            reload(&handle, why).await;
        }
    });
    Ok(Watcher { task })
}

/// One reload, off the runtime, in a `rules.reload` span: with
/// OpenTelemetry on, reloads show in the tracing backend next to the
/// messages they affect. Errors are recorded in the handle's status and
/// logged there.
async fn reload(handle: &Arc<RulesHandle>, trigger: &'static str) {
    let span = tracing::info_span!("rules.reload", trigger, outcome = tracing::field::Empty);
    let h = handle.clone();
    let outcome = match tokio::task::spawn_blocking(move || h.reload()).await {
        Ok(Ok(crate::ReloadOutcome::Swapped { .. })) => "swapped",
        Ok(Ok(crate::ReloadOutcome::Unchanged { .. })) => "unchanged",
        Ok(Err(crate::Error::NotReloadable(_))) => "not_reloadable",
        Ok(Err(_)) => "rejected",
        Err(_) => "panicked",
    };
    span.record("outcome", outcome);
}
