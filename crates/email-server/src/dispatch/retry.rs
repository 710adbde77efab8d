//! The retry schedule: one small pure function.
//!
//! After the `n`th failed attempt (n = 1, 2, ...) the next one waits
//! `base × 2^(n-1)`, capped at `max`, then scaled by a jitter factor in
//! `[0.75, 1.25)` so that emails that failed together do not retry
//! together. With the defaults (base 30 s, max 1 h):
//!
//! | after attempt | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8+ |
//! |---|---|---|---|---|---|---|---|---|
//! | wait (before jitter) | 30 s | 1 min | 2 min | 4 min | 8 min | 16 min | 32 min | 1 h |
//!
//! Whether to retry at all is decided elsewhere: 5xx replies are permanent,
//! `max-fails` attempts lead to `failed`, and a retry that would fall after
//! the email's `max-time` deadline leads to `expired`.

use std::time::Duration;

/// The first wait. Defaults to 30 s.
pub const DEFAULT_BASE: Duration = Duration::from_secs(30);
/// The longest wait. Defaults to 1 h.
pub const DEFAULT_MAX: Duration = Duration::from_secs(3600);

/// The wait after failed attempt number `attempt` (1-based), given a
/// jitter sample `jitter` in `[0, 1)`.
pub fn backoff(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let raw = base.saturating_mul(1u32 << exp).min(max);
    raw.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A jitter sample in `[0, 1)` from the clock and a counter: good enough to
/// spread retries, and no RNG dependency.
pub fn jitter() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mut x = n ^ t.rotate_left(32);
    // SplitMix64 finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn doubles_from_base_to_cap() {
        let mid = 0.5; // jitter factor exactly 1.0
        assert_eq!(backoff(1, DEFAULT_BASE, DEFAULT_MAX, mid), S(30));
        assert_eq!(backoff(2, DEFAULT_BASE, DEFAULT_MAX, mid), S(60));
        assert_eq!(backoff(3, DEFAULT_BASE, DEFAULT_MAX, mid), S(120));
        assert_eq!(backoff(7, DEFAULT_BASE, DEFAULT_MAX, mid), S(1920));
        assert_eq!(backoff(8, DEFAULT_BASE, DEFAULT_MAX, mid), S(3600));
        assert_eq!(backoff(1000, DEFAULT_BASE, DEFAULT_MAX, mid), S(3600));
        assert_eq!(backoff(0, DEFAULT_BASE, DEFAULT_MAX, mid), S(30));
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        assert_eq!(backoff(2, DEFAULT_BASE, DEFAULT_MAX, 0.0), S(45));
        assert!(backoff(2, DEFAULT_BASE, DEFAULT_MAX, 0.999_999) < S(75));
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }
}
