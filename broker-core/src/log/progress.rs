//! A log position that only grows, with async waits for it to reach a
//! value.
//!
//! Appenders wait for `written` (and `flushed`) to pass their records. A
//! `tokio::sync::watch` wakes every waiter on every change and takes its
//! locks even when nobody waits; under load most waiters are not covered
//! by the write that woke them and go back to sleep. Here an advance costs
//! an atomic store when nobody waits, and wakes only the waiters it
//! covers.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct Progress {
    pos: AtomicU64,
    /// Set (under the lock) while `waiters` may be non-empty: advances
    /// that find it clear skip the lock.
    has_waiters: AtomicBool,
    /// Mutex: registrations and wake-ups are short; contended only when
    /// many tasks wait, and then each advance wakes a batch of them.
    waiters: Mutex<Vec<(u64, Waker)>>,
    /// `waiters.len()`, readable without the lock.
    waiting: AtomicUsize,
    /// Signalled on every advance, for one observer (the dispatcher) that
    /// wants "it moved", not "it reached x"; kept apart from `waiters` so
    /// those count appenders only.
    moved: Notify,
    /// Group commit: while the flusher gathers, the registration that
    /// brings `waiting` to this count wakes it (0: nobody gathers).
    gather_target: AtomicUsize,
    gathered: Mutex<()>,
    gathered_cv: Condvar,
    /// Set once, when the position can no longer be trusted to move (the
    /// log's fsync failed): every wait ends with [`Failed`].
    failed: AtomicBool,
}

/// The position will not move again: see [`Progress::fail`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failed;

impl Progress {
    pub fn new(pos: u64) -> Progress {
        Progress {
            pos: AtomicU64::new(pos),
            ..Progress::default()
        }
    }

    pub fn get(&self) -> u64 {
        self.pos.load(Ordering::SeqCst)
    }

    /// How many waits are registered (an estimate: it is read unlocked).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Blocks (a plain thread) until at least `target` waits are
    /// registered, or for `cap`. Woken by the registration that reaches
    /// the target, not by polling. One caller at a time (the flusher).
    pub fn gather(&self, target: usize, cap: Duration) {
        let Ok(mut g) = self.gathered.lock() else {
            return;
        };
        // SeqCst with `wait`: either this check sees the registration, or
        // the registration sees the target and notifies (under the lock).
        self.gather_target.store(target, Ordering::SeqCst);
        let deadline = Instant::now() + cap;
        while self.waiting() < target {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            g = match self.gathered_cv.wait_timeout(g, deadline - now) {
                Ok((g, _)) => g,
                Err(_) => break,
            };
        }
        self.gather_target.store(0, Ordering::SeqCst);
    }

    /// Moves the position to `to` (never back) and wakes the waiters it
    /// reaches; returns how many.
    pub fn advance(&self, to: u64) -> usize {
        self.pos.fetch_max(to, Ordering::SeqCst);
        // A stored permit when nobody waits: the observer cannot miss it.
        self.moved.notify_one();
        // SeqCst pairs with `wait`: either it sees the new position, or
        // this load sees its registration.
        if !self.has_waiters.load(Ordering::SeqCst) {
            return 0;
        }
        let pos = self.get();
        let ready: Vec<Waker> = match self.waiters.lock() {
            Ok(mut w) => {
                let mut ready = Vec::new();
                w.retain(|(end, waker)| {
                    if *end <= pos {
                        ready.push(waker.clone());
                        false
                    } else {
                        true
                    }
                });
                if w.is_empty() {
                    self.has_waiters.store(false, Ordering::SeqCst);
                }
                self.waiting.store(w.len(), Ordering::SeqCst);
                ready
            }
            Err(_) => return 0,
        };
        let n = ready.len();
        for w in ready {
            w.wake();
        }
        n
    }

    /// Ends every wait, now and later, with [`Failed`].
    pub fn fail(&self) {
        self.failed.store(true, Ordering::SeqCst);
        let all: Vec<(u64, Waker)> = match self.waiters.lock() {
            Ok(mut w) => std::mem::take(&mut *w),
            Err(_) => return,
        };
        self.waiting.store(0, Ordering::SeqCst);
        for (_, w) in all {
            w.wake();
        }
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Resolves after the next advance (or at once if one happened since
    /// the last call returned). For a single observer.
    pub async fn moved(&self) {
        self.moved.notified().await;
    }

    /// Resolves once the position is at least `end`, or [`Failed`] once
    /// it never will be.
    pub async fn wait(&self, end: u64) -> Result<(), Failed> {
        poll_fn(|cx| {
            if self.get() >= end {
                return Poll::Ready(Ok(()));
            }
            if self.failed() {
                return Poll::Ready(Err(Failed));
            }
            let Ok(mut w) = self.waiters.lock() else {
                return Poll::Ready(Err(Failed));
            };
            self.has_waiters.store(true, Ordering::SeqCst);
            // Under the lock `fail` takes: it either sees this waiter or
            // this sees its flag.
            if self.get() >= end {
                return Poll::Ready(Ok(()));
            }
            if self.failed() {
                return Poll::Ready(Err(Failed));
            }
            // Polled again without being woken (or moved to another
            // thread): refresh the registration instead of adding one.
            if !w
                .iter()
                .any(|(e, wk)| *e == end && wk.will_wake(cx.waker()))
            {
                w.push((end, cx.waker().clone()));
                let n = w.len();
                self.waiting.store(n, Ordering::SeqCst);
                drop(w);
                let target = self.gather_target.load(Ordering::SeqCst);
                if target != 0 && n >= target {
                    if let Ok(_g) = self.gathered.lock() {
                        self.gathered_cv.notify_one();
                    }
                }
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiters_wake_when_reached_and_only_then() {
        let p = Arc::new(Progress::new(10));
        p.wait(10).await.unwrap(); // already there
        let tasks: Vec<_> = (11..=40u64)
            .map(|end| {
                let p = p.clone();
                tokio::spawn(async move {
                    p.wait(end).await.unwrap();
                    assert!(p.get() >= end);
                })
            })
            .collect();
        for to in (12..=40).step_by(3) {
            tokio::task::yield_now().await;
            p.advance(to);
        }
        p.advance(5); // never backwards
        assert_eq!(p.get(), 39);
        p.advance(40);
        for t in tasks {
            t.await.unwrap();
        }
        assert!(p.waiters.lock().unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_position_ends_every_wait_now_and_later() {
        let p = Arc::new(Progress::new(10));
        let waiting: Vec<_> = (11..=20u64)
            .map(|end| {
                let p = p.clone();
                tokio::spawn(async move { p.wait(end).await })
            })
            .collect();
        while p.waiting() < 10 {
            tokio::task::yield_now().await;
        }
        p.fail();
        for t in waiting {
            assert_eq!(t.await.unwrap(), Err(Failed));
        }
        assert_eq!(p.wait(30).await, Err(Failed));
        assert_eq!(p.wait(10).await, Ok(()), "what was reached stays reached");
    }
}
