//! Retrying what a retry can fix: exponential backoff with jitter, and the
//! loop that retries a cache operation until it succeeds.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use cm_store::StoreError;

use crate::error::WorkerError;
use crate::observer::Observer;

/// The first wait.
const FIRST_DELAY: Duration = Duration::from_millis(50);

/// Exponential backoff between retries, capped, with jitter: each wait is
/// drawn between half and all of the current step, so workers (and the
/// invalidator and its standby) that failed together do not retry in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at 50 ms, doubles up to `max`.
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            next: FIRST_DELAY.min(max),
            max,
        }
    }

    /// The wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        step / 2 + step.mul_f64(random_unit() / 2.0)
    }
}

/// A number in `[0, 1)`, from the standard library's per-process random
/// hash keys (no randomness crate for one jitter factor).
fn random_unit() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Retries a cache operation with backoff until it succeeds. Errors that no
/// retry can fix (invalid keys, oversized values) are returned; everything
/// else (down, slow, contended) is reported, logged and retried, while the
/// stream's own task keeps answering keepalives and nothing is
/// acknowledged. A stop request cancels the loop from outside
/// ([`crate::Worker::run`]).
pub(crate) async fn retry_store<T, F, Fut>(
    max_backoff: Duration,
    observer: &dyn Observer,
    what: &str,
    mut op: F,
) -> Result<T, WorkerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut backoff = Backoff::new(max_backoff);
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(error @ (StoreError::InvalidKey { .. } | StoreError::ValueTooLarge { .. })) => {
                return Err(error.into())
            }
            Err(error) => {
                observer.cache_error();
                tracing::warn!(%error, what, "cache operation failed; retrying, nothing is acknowledged");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_stay_within_half_to_whole_step() {
        let max = Duration::from_millis(400);
        let mut backoff = Backoff::new(max);
        let steps = [50, 100, 200, 400, 400, 400];
        for step in steps {
            let step = Duration::from_millis(step);
            let delay = backoff.next_delay();
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} outside [{:?}, {step:?}]",
                step / 2
            );
        }
    }

    #[test]
    fn jitter_varies() {
        let delays: std::collections::HashSet<Duration> = (0..20)
            .map(|_| Backoff::new(Duration::from_secs(10)).next_delay())
            .collect();
        assert!(delays.len() > 1, "20 first delays were all equal");
    }
}
