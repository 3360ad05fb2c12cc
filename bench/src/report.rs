//! Latency recording and the report: throughput and percentiles, as text or one JSON line.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::Args;

/// Latencies (µs) of completed operations, when each completed (µs since the start), and
/// errors by message.
#[derive(Default)]
pub struct Report {
    latencies: Vec<u64>,
    completions: Vec<u64>,
    errors: BTreeMap<String, u64>,
    /// Why a client stopped early (nothing answered), if one did.
    gave_up: Option<String>,
}

impl Report {
    pub fn record(&mut self, latencies: &[Duration], at: Duration) {
        self.latencies
            .extend(latencies.iter().map(|d| d.as_micros() as u64));
        self.completions.push(at.as_micros() as u64);
    }

    /// The longest time (ms) between two successive completions of any clients: how long
    /// the service stopped acknowledging, e.g. while a new leader was elected.
    fn max_gap_ms(&mut self) -> f64 {
        self.completions.sort_unstable();
        let gap = self
            .completions
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(0);
        gap as f64 / 1000.0
    }

    pub fn error(&mut self, e: String) {
        *self.errors.entry(e).or_default() += 1;
    }

    /// A client stopped because nothing answered.
    pub fn gave_up(&mut self, why: String) {
        self.gave_up = Some(why);
    }

    /// Why the run stopped early, if it did.
    pub fn stopped_early(&self) -> Option<&str> {
        self.gave_up.as_deref()
    }

    pub fn merge(&mut self, other: Report) {
        if other.gave_up.is_some() {
            self.gave_up = other.gave_up;
        }
        self.latencies.extend(other.latencies);
        self.completions.extend(other.completions);
        for (e, n) in other.errors {
            *self.errors.entry(e).or_default() += n;
        }
    }

    pub fn print(mut self, workload: &str, elapsed: Duration, json: bool) {
        self.latencies.sort_unstable();
        let gap = self.max_gap_ms();
        let n = self.latencies.len();
        let pct = |p: f64| percentile(&self.latencies, p) as f64 / 1000.0;
        let avg = if n == 0 {
            0.0
        } else {
            self.latencies.iter().sum::<u64>() as f64 / n as f64 / 1000.0
        };
        let throughput = n as f64 / elapsed.as_secs_f64();
        let errors: u64 = self.errors.values().sum();
        if json {
            println!(
                "{{\"workload\":\"{workload}\",\"ops\":{n},\"errors\":{errors},\"seconds\":{:.3},\"throughput\":{throughput:.1},\"avg_ms\":{avg:.3},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3},\"max_gap_ms\":{gap:.3}}}",
                elapsed.as_secs_f64(),
                pct(50.0),
                pct(90.0),
                pct(99.0),
                pct(99.9),
                pct(100.0)
            );
            return;
        }
        println!("Summary ({workload}):");
        println!("  Total:        {:.4} secs.", elapsed.as_secs_f64());
        println!("  Operations:   {n} ({errors} errors)");
        println!("  Requests/sec: {throughput:.1}");
        println!("  Average:      {avg:.3} ms");
        for (label, p) in [("50%", 50.0), ("90%", 90.0), ("99%", 99.0), ("99.9%", 99.9)] {
            println!("  {label:>6} in    {:.3} ms", pct(p));
        }
        println!("  Slowest:      {:.3} ms", pct(100.0));
        println!("  Longest gap between completions: {gap:.3} ms");
        for (e, count) in &self.errors {
            println!("  error x{count}: {e}");
        }
    }
}

/// A progress bar on stderr, counting operations (or seconds with `--duration`).
pub fn progress(args: &Args) -> ProgressBar {
    if args.no_progress || args.json || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    }
    let bar = match args.duration {
        Some(_) => ProgressBar::new_spinner(),
        None => ProgressBar::new(args.total),
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} ops {per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// The nearest-rank `p`th percentile of `sorted` (ascending); the default of `T` when empty.
pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    match sorted.len() {
        0 => T::default(),
        n => sorted[(((p / 100.0) * n as f64).ceil() as usize).clamp(1, n) - 1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_spans_clients_and_ignores_completion_order() {
        let ms = Duration::from_millis;
        let mut a = Report::default();
        for at in [0, 30, 31] {
            a.record(&[ms(1)], ms(at));
        }
        let mut b = Report::default();
        for at in [2, 5] {
            b.record(&[ms(1)], ms(at));
        }
        a.merge(b);
        // 0, 2, 5, 30, 31: nothing completed between 5 and 30 ms.
        assert_eq!(a.max_gap_ms(), 25.0);
        assert_eq!(Report::default().max_gap_ms(), 0.0);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&[7.5f64], 99.0), 7.5);
        assert_eq!(percentile::<f64>(&[], 99.0), 0.0);
    }
}
