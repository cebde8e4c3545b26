//! The one health rule, for `/healthz` (inside the worker) and `status`
//! (from outside the process): the slot's lag and the age of the last
//! heartbeat round trip within `[metrics]`'s bounds.

use std::time::Duration;

use cm_invalidator::config::MetricsConfig;

/// The bounds a healthy worker stays within.
#[derive(Debug, Clone, Copy)]
pub struct HealthBounds {
    /// Maximum slot lag in bytes (`metrics.max_lag_bytes`).
    pub max_lag_bytes: u64,
    /// Maximum heartbeat age (`metrics.max_heartbeat_age_ms`).
    pub max_heartbeat_age: Duration,
}

impl HealthBounds {
    /// The bounds `[metrics]` sets.
    pub fn of(config: &MetricsConfig) -> HealthBounds {
        HealthBounds {
            max_lag_bytes: config.max_lag_bytes,
            max_heartbeat_age: Duration::from_millis(config.max_heartbeat_age_ms),
        }
    }

    /// What is out of bounds, one sentence each naming its config key;
    /// empty when both are within. An unknown lag is no violation; no
    /// heartbeat yet is one.
    pub fn violations(
        &self,
        lag_bytes: Option<u64>,
        heartbeat_age: Option<Duration>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(lag) = lag_bytes.filter(|lag| *lag > self.max_lag_bytes) {
            out.push(format!(
                "slot lag {lag} bytes exceeds metrics.max_lag_bytes {}",
                self.max_lag_bytes
            ));
        }
        match heartbeat_age {
            None => out.push("no heartbeat has completed a round trip yet".into()),
            Some(age) if age > self.max_heartbeat_age => out.push(format!(
                "last heartbeat round trip {:.1} s ago exceeds metrics.max_heartbeat_age_ms {}",
                age.as_secs_f64(),
                self.max_heartbeat_age.as_millis()
            )),
            Some(_) => {}
        }
        out
    }
}
