//! Calls the broker refused for now, tried again.
//!
//! A RocketMQ broker under load sheds requests before it runs them: a
//! request that waited in its send queue longer than
//! `waitTimeMillsInSendQueue` (200 ms by default) is answered
//! `SYSTEM_BUSY` ("[TIMEOUT_CLEAN_QUEUE] broker busy"), and so is one that
//! arrives while the commit log's page cache is busy. RocketMQ's own
//! producer sends such a message again (`retryTimesWhenSendFailed`); the
//! backend does the same for every call that such an answer leaves
//! undone, a few times with a doubling pause, so that a burst on a shared
//! broker costs latency rather than a failed publish or receive.
//!
//! Only answers that say the request was *not* carried out are retried:
//! `SYSTEM_BUSY` and `SERVICE_NOT_AVAILABLE` are given before the broker
//! touches its store. A timeout, or any other error, may have landed, and
//! is returned to the caller as it is.

use std::future::Future;
use std::time::Duration;

use rocketmq_client_rust::ClientError;

use crate::error::response_code;

/// RocketMQ's `SYSTEM_BUSY`.
const SYSTEM_BUSY: i32 = 2;
/// RocketMQ's `SERVICE_NOT_AVAILABLE` (a store not writable yet, or a
/// broker shutting down).
const SERVICE_NOT_AVAILABLE: i32 = 14;

/// Calls in all, the first included.
pub(crate) const TRIES: u32 = 4;
/// The pause before the second call; it doubles before each next one
/// (25 + 50 + 100 ms: a burst's queue drains within that, and a broker
/// still busy after it is worth an error).
const FIRST_PAUSE: Duration = Duration::from_millis(25);

/// Whether the broker answered that it did not carry the request out.
pub(crate) fn refused(e: &ClientError) -> bool {
    matches!(response_code(e), Some(SYSTEM_BUSY | SERVICE_NOT_AVAILABLE))
}

/// Runs `call` (told whether it is the last try: a call that must give up
/// what it sends can keep a copy for all but the last) until it succeeds,
/// fails otherwise than [`refused`], or has been tried [`TRIES`] times.
pub(crate) async fn retry<T, F, Fut>(op: &'static str, mut call: F) -> Result<T, ClientError>
where
    F: FnMut(bool) -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut pause = FIRST_PAUSE;
    for _ in 1..TRIES {
        match call(false).await {
            Err(e) if refused(&e) => {
                tracing::debug!(op, error = %e, ?pause, "broker busy, trying again");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            other => return other,
        }
    }
    call(true).await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use rocketmq_client_rust::MQClientException;

    use super::*;

    fn answer(code: i32) -> ClientError {
        ClientError::illegal_argument_source(MQClientException::new_with_code(code, "answer"))
    }

    /// Fails with `code` the first `fails` calls, then succeeds; counts
    /// the calls and the last-try flags.
    async fn run(code: i32, fails: u32) -> (Result<u32, ClientError>, u32, u32) {
        let calls = AtomicU32::new(0);
        let lasts = AtomicU32::new(0);
        let r = retry("test", |last| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            if last {
                lasts.fetch_add(1, Ordering::SeqCst);
            }
            async move {
                match n < fails {
                    true => Err(answer(code)),
                    false => Ok(n),
                }
            }
        })
        .await;
        (r, calls.into_inner(), lasts.into_inner())
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_broker_is_asked_again_after_a_pause() {
        let t0 = tokio::time::Instant::now();
        let (r, calls, lasts) = run(SYSTEM_BUSY, 2).await;
        assert_eq!(r.ok(), Some(2));
        assert_eq!((calls, lasts), (3, 0));
        assert_eq!(t0.elapsed(), Duration::from_millis(25 + 50));
    }

    #[tokio::test(start_paused = true)]
    async fn a_broker_busy_every_time_fails_after_the_last_try() {
        let (r, calls, lasts) = run(SERVICE_NOT_AVAILABLE, 10).await;
        let e = r.err().map(|e| response_code(&e));
        assert_eq!(e, Some(Some(SERVICE_NOT_AVAILABLE)));
        assert_eq!((calls, lasts), (TRIES, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn other_errors_are_not_tried_again() {
        // TOPIC_NOT_EXIST, and a system error that may follow a write.
        for code in [17, 1] {
            let (r, calls, _) = run(code, 1).await;
            assert!(r.is_err());
            assert_eq!(calls, 1, "code {code}");
        }
    }
}
