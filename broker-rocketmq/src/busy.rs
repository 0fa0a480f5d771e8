//! Calls the broker refused for now, tried again.
//!
//! A RocketMQ broker under load sheds requests before it runs them: one
//! that waited in its send queue longer than `waitTimeMillsInSendQueue`
//! (200 ms by default), or that arrives while its own page-cache check
//! says the commit log is busy, is answered `SYSTEM_BUSY` ("[TIMEOUT_CLEAN_QUEUE]
//! broker busy"). RocketMQ's own producer sends such a message again
//! (`retryTimesWhenSendFailed`), but not a send to a chosen queue, which
//! is how cellgate sends; so the backend tries again itself, a few times
//! with a doubling pause, and a burst on a shared broker costs latency
//! rather than a failed publish or receive.
//!
//! What is retried depends on whether the call may be repeated:
//! - a send ([`Call::Send`]) only on `SYSTEM_BUSY`, which the broker gives
//!   before it appends. `SERVICE_NOT_AVAILABLE` can come after the append
//!   (a lapsed write lease, an append worker that dropped its answer), and
//!   a second copy of a message is a duplicate;
//! - a read or an idempotent write ([`Call::Repeatable`]: a pull, an
//!   offset commit) on `SERVICE_NOT_AVAILABLE` too (a store not writable
//!   yet, a broker shutting down).
//!
//! A timeout, or any other error, is returned to the caller as it is. A
//! send to a topic (journal appends) is not wrapped: the client already
//! retries those.

use std::future::Future;
use std::time::Duration;

use rocketmq_client_rust::ClientError;

use crate::error::response_code;

/// RocketMQ's `SYSTEM_BUSY`.
const SYSTEM_BUSY: i32 = 2;
/// RocketMQ's `SERVICE_NOT_AVAILABLE`.
const SERVICE_NOT_AVAILABLE: i32 = 14;

/// Calls in all, the first included.
const TRIES: u32 = 4;
/// The pause before the second call; it doubles before each next one
/// (25 + 50 + 100 ms: a burst's queue drains within that, and a broker
/// still busy after it is worth an error).
const FIRST_PAUSE: Duration = Duration::from_millis(25);

/// What a retried call is, which decides what it is retried on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    /// Stores a message: repeated only when it surely did not.
    Send,
    /// Repeating it changes nothing.
    Repeatable,
}

/// Whether the broker's answer to `call` says to try again.
fn refused(call: Call, e: &ClientError) -> bool {
    matches!(
        (call, response_code(e)),
        (_, Some(SYSTEM_BUSY)) | (Call::Repeatable, Some(SERVICE_NOT_AVAILABLE))
    )
}

/// Runs `call` until it succeeds, fails otherwise than [`refused`], or
/// has been tried [`TRIES`] times.
pub(crate) async fn retry<T, F, Fut>(
    op: &'static str,
    kind: Call,
    mut call: F,
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut pause = FIRST_PAUSE;
    for _ in 1..TRIES {
        match call().await {
            Err(e) if refused(kind, &e) => {
                tracing::debug!(op, error = %e, ?pause, "broker busy, trying again");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            other => return other,
        }
    }
    call().await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use rocketmq_client_rust::MQClientException;

    use super::*;

    /// A broker's answer, as the client reports it.
    fn answer(code: i32) -> ClientError {
        ClientError::broker_operation_failed("SEND_MESSAGE", code, "answer")
    }

    /// Fails with `code` the first `fails` calls, then succeeds; counts
    /// the calls.
    async fn run(kind: Call, code: i32, fails: u32) -> (Result<u32, ClientError>, u32) {
        let calls = AtomicU32::new(0);
        let r = retry("test", kind, || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                match n < fails {
                    true => Err(answer(code)),
                    false => Ok(n),
                }
            }
        })
        .await;
        (r, calls.into_inner())
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_broker_is_asked_again_after_a_pause() {
        let t0 = tokio::time::Instant::now();
        let (r, calls) = run(Call::Send, SYSTEM_BUSY, 2).await;
        assert_eq!(r.ok(), Some(2));
        assert_eq!(calls, 3);
        assert_eq!(t0.elapsed(), Duration::from_millis(25 + 50));
    }

    #[tokio::test(start_paused = true)]
    async fn a_broker_busy_every_time_fails_after_the_last_try() {
        let (r, calls) = run(Call::Repeatable, SERVICE_NOT_AVAILABLE, 10).await;
        let e = r.err().map(|e| response_code(&e));
        assert_eq!(e, Some(Some(SERVICE_NOT_AVAILABLE)));
        assert_eq!(calls, TRIES);
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_is_not_repeated_when_it_may_have_landed() {
        // SERVICE_NOT_AVAILABLE may follow an append; SYSTEM_ERROR too.
        for code in [SERVICE_NOT_AVAILABLE, 1] {
            let (r, calls) = run(Call::Send, code, 1).await;
            assert!(r.is_err());
            assert_eq!(calls, 1, "code {code}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn other_errors_are_not_tried_again() {
        // TOPIC_NOT_EXIST, and a system error.
        for code in [17, 1] {
            let (r, calls) = run(Call::Repeatable, code, 1).await;
            assert!(r.is_err());
            assert_eq!(calls, 1, "code {code}");
        }
    }

    #[test]
    fn a_code_inside_a_client_exception_counts_too() {
        // How the client reports some broker answers (error.rs).
        let e = ClientError::illegal_argument_source(MQClientException::new_with_code(
            SYSTEM_BUSY,
            "busy",
        ));
        assert!(refused(Call::Send, &e));
    }
}
