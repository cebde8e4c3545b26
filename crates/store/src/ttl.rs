//! Turning [`Duration`]s into memcached TTL seconds.

use std::time::Duration;

/// The longest TTL sent, 30 days: memcached reads a larger number as an
/// absolute unix time, which would make expiry depend on the clocks of the
/// client and the server. Longer TTLs are capped to this.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Whole seconds for memcached: rounded up, at least 1 (0 would mean "never
/// expires"), at most [`MAX_TTL`].
pub(crate) fn ttl_secs(ttl: Duration) -> u32 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    let secs = secs.clamp(1, MAX_TTL.as_secs());
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// The same rule as a duration, for the in-process store, so both stores
/// keep an item equally long.
pub(crate) fn effective_ttl(ttl: Duration) -> Duration {
    Duration::from_secs(u64::from(ttl_secs(ttl)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_and_are_capped() {
        assert_eq!(ttl_secs(Duration::ZERO), 1);
        assert_eq!(ttl_secs(Duration::from_millis(1)), 1);
        assert_eq!(ttl_secs(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_secs(Duration::from_secs(60)), 60);
        assert_eq!(ttl_secs(Duration::from_secs(u64::MAX)), 2_592_000);
    }
}
