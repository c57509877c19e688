//! Staleness SLOs (issue 20): a keyspace promises that a share (`target`) of the reads at a
//! level, over a sliding `window`, are served at most `staleness_ms` stale — the freshness SLI
//! of the SRE workbook (good reads / valid reads). A read is *valid* when it was served or
//! refused for lack of a fresh enough copy (see [`SloWindow::record`]); it is *good* when it
//! was served and its receipt proves it at most `staleness_ms` stale (a receipt that cannot
//! bound its staleness is not good). Pure: callers pass the time.

use crate::code::{Code, TunekvError};
use crate::level::Level;
use serde::{Deserialize, Serialize};

/// Most SLOs one keyspace may have.
pub const SLOS_MAX: usize = 8;
/// Shortest and longest window.
pub const WINDOW_MS_MIN: u64 = 1_000;
pub const WINDOW_MS_MAX: u64 = 7 * 24 * 3_600_000;
/// Largest staleness bound (one day).
pub const STALENESS_MS_MAX: u64 = 24 * 3_600_000;
/// A window is kept as this many buckets (each a 120th of it, at least a second would be
/// coarse for short windows, so buckets are `window / BUCKETS` long, at least 100 ms).
pub const BUCKETS: u64 = 120;
const BUCKET_MS_MIN: u64 = 100;

/// A target share of good reads, 0 < target < 1 (compared exactly, so specs stay `Eq`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Target(pub f64);

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Target {}

/// One SLO as the keyspace spec states it:
/// `{"level":"eventual","staleness_ms":5000,"target":0.95,"window":"5m"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloSpec {
    /// The reads it is about: those at this level's kind (`bounded(t=3s)` and `bounded(k=5)`
    /// reads both count for `"level":"bounded(t=1s)"`; see [`SloSpec::covers`]).
    pub level: String,
    pub staleness_ms: u64,
    pub target: Target,
    /// `30s`, `5m`, `1h`, `1d` (or a plain number of milliseconds).
    pub window: String,
}

/// Parses a window: a number and a unit (`ms`, `s`, `m`, `h`, `d`), or a plain number of
/// milliseconds.
pub fn parse_window(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("window {text:?}: a number then s, m, h or d (e.g. \"5m\")"))?;
    let per = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("window {text:?}: the unit is ms, s, m, h or d")),
    };
    n.checked_mul(per)
        .ok_or_else(|| format!("window {text:?} is too long"))
}

impl SloSpec {
    /// The level it is about (the spec was validated).
    pub fn level(&self) -> Option<Level> {
        Level::parse(&self.level).ok()
    }

    pub fn window_ms(&self) -> u64 {
        parse_window(&self.window).unwrap_or(WINDOW_MS_MIN)
    }

    /// Whether a read at `level` counts for this SLO: same kind of level.
    pub fn covers(&self, level: Level) -> bool {
        self.level()
            .is_some_and(|l| std::mem::discriminant(&l) == std::mem::discriminant(&level))
    }

    /// A short, stable name for labels and logs: `eventual<=5000ms@0.95/5m`.
    pub fn id(&self) -> String {
        format!(
            "{}<={}ms@{}/{}",
            self.level, self.staleness_ms, self.target.0, self.window
        )
    }

    /// Checks one SLO; `admits` tells whether the keyspace's mode serves the level.
    pub fn validate(
        &self,
        admits: impl Fn(Level) -> Result<(), TunekvError>,
    ) -> Result<(), TunekvError> {
        let invalid = |m: String| Err(TunekvError::new(Code::KeyspaceInvalid, format!("slo: {m}")));
        let level = match Level::parse(&self.level) {
            Ok(l) => l,
            Err(e) => return invalid(e.message),
        };
        if let Err(e) = admits(level) {
            return invalid(e.message);
        }
        if self.staleness_ms == 0 || self.staleness_ms > STALENESS_MS_MAX {
            return invalid(format!(
                "staleness_ms must be 1 to {STALENESS_MS_MAX}, got {}",
                self.staleness_ms
            ));
        }
        let t = self.target.0;
        if !(t > 0.0 && t < 1.0) {
            return invalid(format!(
                "target is the share of good reads, above 0 and below 1 (e.g. 0.95), got {t}"
            ));
        }
        match parse_window(&self.window) {
            Err(e) => invalid(e),
            Ok(ms) if !(WINDOW_MS_MIN..=WINDOW_MS_MAX).contains(&ms) => {
                invalid(format!("window must be 1s to 7d, got {:?}", self.window))
            }
            Ok(_) => Ok(()),
        }
    }
}

/// Where an SLO stands over its window now.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SloState {
    pub good: u64,
    pub valid: u64,
    /// good / valid over the window; 1 when there was no valid read.
    pub compliance: f64,
    /// How fast the error budget burns: (1 − compliance) / (1 − target). 1 spends exactly the
    /// budget over the window; above 1 the SLO is being missed.
    pub burn_rate: f64,
    /// Compliance below target with at least one valid read in the window.
    pub violated: bool,
}

/// Good and valid reads of one SLO over a sliding window, in buckets.
#[derive(Clone, Debug)]
pub struct SloWindow {
    target: f64,
    staleness_ms: u64,
    bucket_ms: u64,
    /// (bucket number, good, valid), oldest first; only buckets within the window.
    buckets: std::collections::VecDeque<(u64, u64, u64)>,
    window_buckets: u64,
    /// Reads counted since the window was made (never decreases).
    pub good_total: u64,
    pub valid_total: u64,
}

impl SloWindow {
    pub fn new(spec: &SloSpec) -> SloWindow {
        let window = spec.window_ms();
        let bucket_ms = (window / BUCKETS).max(BUCKET_MS_MIN);
        SloWindow {
            target: spec.target.0,
            staleness_ms: spec.staleness_ms,
            bucket_ms,
            buckets: Default::default(),
            window_buckets: window.div_ceil(bucket_ms),
            good_total: 0,
            valid_total: 0,
        }
    }

    fn expire(&mut self, now_ms: u64) -> u64 {
        let b = now_ms / self.bucket_ms;
        while self
            .buckets
            .front()
            .is_some_and(|(n, _, _)| n + self.window_buckets <= b)
        {
            self.buckets.pop_front();
        }
        b
    }

    /// A read at `now_ms`: served with this staleness (`Some(ms)`, `u64::MAX` when its
    /// receipt could not bound it), or refused (`None`). Returns whether it was good.
    pub fn record(&mut self, now_ms: u64, served_ms: Option<u64>) -> bool {
        let good = served_ms.is_some_and(|ms| ms <= self.staleness_ms);
        let b = self.expire(now_ms);
        match self.buckets.back_mut() {
            Some((n, g, v)) if *n == b => {
                *g += u64::from(good);
                *v += 1;
            }
            _ => self.buckets.push_back((b, u64::from(good), 1)),
        }
        self.good_total += u64::from(good);
        self.valid_total += 1;
        good
    }

    /// Where the SLO stands at `now_ms`.
    pub fn state(&mut self, now_ms: u64) -> SloState {
        self.expire(now_ms);
        let (good, valid) = self
            .buckets
            .iter()
            .fold((0, 0), |(g, v), (_, bg, bv)| (g + bg, v + bv));
        let compliance = if valid == 0 {
            1.0
        } else {
            good as f64 / valid as f64
        };
        SloState {
            good,
            valid,
            compliance,
            burn_rate: (1.0 - compliance) / (1.0 - self.target),
            violated: valid > 0 && compliance < self.target,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> SloSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn windows_parse() {
        assert_eq!(parse_window("5m"), Ok(300_000));
        assert_eq!(parse_window("30s"), Ok(30_000));
        assert_eq!(parse_window("1h"), Ok(3_600_000));
        assert_eq!(parse_window("2d"), Ok(172_800_000));
        assert_eq!(parse_window("1500"), Ok(1_500));
        assert!(parse_window("5 minutes").is_err());
        assert!(parse_window("m").is_err());
        assert!(parse_window("99999999999999999999d").is_err());
    }

    #[test]
    fn specs_are_validated() {
        let ok = |_| Ok(());
        let good = spec(r#"{"level":"eventual","staleness_ms":5000,"target":0.95,"window":"5m"}"#);
        assert!(good.validate(ok).is_ok());
        assert_eq!(good.id(), "eventual<=5000ms@0.95/5m");
        for bad in [
            r#"{"level":"sometimes","staleness_ms":5000,"target":0.95,"window":"5m"}"#,
            r#"{"level":"eventual","staleness_ms":0,"target":0.95,"window":"5m"}"#,
            r#"{"level":"eventual","staleness_ms":5000,"target":1.0,"window":"5m"}"#,
            r#"{"level":"eventual","staleness_ms":5000,"target":0,"window":"5m"}"#,
            r#"{"level":"eventual","staleness_ms":5000,"target":0.95,"window":"500ms"}"#,
            r#"{"level":"eventual","staleness_ms":5000,"target":0.95,"window":"30d"}"#,
            r#"{"level":"eventual","staleness_ms":5000,"target":0.95,"window":"soon"}"#,
        ] {
            let e = spec(bad).validate(ok).unwrap_err();
            assert_eq!(e.code, Code::KeyspaceInvalid, "{bad}");
        }
        assert!(serde_json::from_str::<SloSpec>(
            r#"{"level":"eventual","staleness_ms":5000,"target":0.95,"window":"5m","x":1}"#
        )
        .is_err());
        let refuse = |_| Err(TunekvError::new(Code::LevelInvalid, "not here"));
        assert!(good.validate(refuse).is_err());
    }

    #[test]
    fn levels_match_by_kind() {
        let s = spec(r#"{"level":"bounded(t=1s)","staleness_ms":1000,"target":0.9,"window":"1m"}"#);
        assert!(s.covers(Level::parse("bounded(k=5)").unwrap()));
        assert!(!s.covers(Level::Eventual));
    }

    #[test]
    fn the_window_slides_and_the_budget_burns() {
        let s = spec(r#"{"level":"eventual","staleness_ms":100,"target":0.9,"window":"10s"}"#);
        let mut w = SloWindow::new(&s);
        assert!(!w.state(0).violated, "no reads: not violated");
        assert_eq!(w.state(0).compliance, 1.0);
        for i in 0..90 {
            assert!(w.record(i * 10, Some(50)));
        }
        for i in 0..10 {
            assert!(!w.record(1000 + i, Some(150)));
        }
        let st = w.state(1500);
        assert_eq!((st.good, st.valid), (90, 100));
        assert!(!st.violated, "exactly at target");
        assert!((st.burn_rate - 1.0).abs() < 1e-9);
        // Refusals and unbounded receipts are bad.
        assert!(!w.record(2000, None));
        assert!(!w.record(2000, Some(u64::MAX)));
        let st = w.state(2000);
        assert!(st.violated && st.burn_rate > 1.0, "{st:?}");
        // Ten seconds later every read has left the window.
        let st = w.state(12_500);
        assert_eq!((st.good, st.valid, st.violated), (0, 0, false));
        assert_eq!((w.good_total, w.valid_total), (90, 102));
        // Good reads bring it back.
        for i in 0..10 {
            w.record(13_000 + i, Some(1));
        }
        assert!(!w.state(13_100).violated);
    }
}
