//! What one round measures (a [`Sample`] per enforcer) and how rounds
//! become the figures: medians, and ratios taken round by round.

use std::collections::BTreeMap;

use super::datapath::Enforcer;
use super::stats::{median, ratio};

/// Figures of one enforcer in one round.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Gbit/s.
    pub throughput: f64,
    /// µs.
    pub rr_p50: f64,
    /// µs.
    pub rr_p99: f64,
    /// Connections per second.
    pub conn_rate: f64,
    /// µs, each connection's.
    pub conn_latencies: Vec<f64>,
}

/// Medians over rounds, per enforcer.
pub type Medians = BTreeMap<Enforcer, Sample>;

/// Every round's sample, per enforcer, in round order.
#[derive(Clone, Debug, Default)]
pub struct Rounds(pub BTreeMap<Enforcer, Vec<Sample>>);

impl Rounds {
    /// Medians over rounds, per enforcer.
    pub fn medians(&self) -> Medians {
        self.0.iter().map(|(e, v)| (*e, medians(v))).collect()
    }

    /// Figure `f` of `e` against the baseline ([`Enforcer::None`]): the
    /// median over rounds of the ratio within each round. A slow spell of
    /// the machine touches the variants of one round alike, so it cancels
    /// out of that round's ratio, where a ratio of medians would compare
    /// samples taken at different times.
    pub fn ratio(&self, e: Enforcer, f: impl Fn(&Sample) -> f64) -> f64 {
        let (Some(a), Some(b)) = (self.0.get(&e), self.0.get(&Enforcer::None)) else {
            return f64::NAN;
        };
        let per_round: Vec<f64> = a
            .iter()
            .zip(b)
            .map(|(x, y)| ratio(f(x), f(y)))
            .filter(|r| !r.is_nan())
            .collect();
        median(&per_round)
    }
}

/// Medians of each figure over `samples`, every connection's latency kept.
pub fn medians(samples: &[Sample]) -> Sample {
    let m = |f: fn(&Sample) -> f64| median(&samples.iter().map(f).collect::<Vec<_>>());
    Sample {
        throughput: m(|s| s.throughput),
        rr_p50: m(|s| s.rr_p50),
        rr_p99: m(|s| s.rr_p99),
        conn_rate: m(|s| s.conn_rate),
        conn_latencies: samples
            .iter()
            .flat_map(|s| s.conn_latencies.iter().copied())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(rate: f64) -> Sample {
        Sample {
            conn_rate: rate,
            ..Sample::default()
        }
    }

    #[test]
    fn ratios_are_taken_round_by_round() {
        // The machine slows down in rounds 2 and 3 for both variants.
        let r = Rounds(
            [
                (
                    Enforcer::None,
                    [100.0, 100.0, 30.0, 30.0, 100.0].map(conn).to_vec(),
                ),
                (
                    Enforcer::Palisade,
                    [96.0, 95.0, 29.0, 28.0, 97.0].map(conn).to_vec(),
                ),
            ]
            .into(),
        );
        // Round ratios 0.96, 0.95, 0.967, 0.933, 0.97: their median.
        assert_eq!(r.ratio(Enforcer::Palisade, |s| s.conn_rate), 0.96);
        assert_eq!(r.ratio(Enforcer::None, |s| s.conn_rate), 1.0);
        assert!(r.ratio(Enforcer::Iptables, |s| s.conn_rate).is_nan());
        assert_eq!(r.medians()[&Enforcer::Palisade].conn_rate, 95.0);
    }
}
