//! Percentiles over latency samples.

use std::time::Duration;

/// Nearest-rank percentile of `samples` (sorted in place), in milliseconds.
pub fn percentile_ms(samples: &mut [Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort();
    let rank = ((p / 100.0) * samples.len() as f64).ceil().max(1.0) as usize;
    let d = samples[rank.min(samples.len()) - 1];
    (d.as_secs_f64() * 1e6).round() / 1e3
}
