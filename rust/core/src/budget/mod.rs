//! What a dollar budget is: a name, a limit per day or per month in a time zone, and the
//! shares of the limit at which to alert. Amounts are integer nano-dollars inside (1e-9 $):
//! reservations round up, settlements round to the nearest nano-dollar.

use crate::error::{Error, Result};
use crate::store::keys;
use chrono::{DateTime, Datelike, LocalResult, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use std::sync::{Arc, RwLock};

mod holds;
pub mod ledger;
mod ledger_local;
mod ledger_redis;

/// Nano-dollars in a dollar.
pub const NANOS_PER_DOLLAR: f64 = 1e9;

/// The largest limit accepted, in dollars. Amounts stay exact in Lua's doubles (2^53
/// nano-dollars is about 9 million dollars) with room for spending past the limit.
pub const MAX_LIMIT_DOLLARS: f64 = 1_000_000.0;

/// The alert thresholds a budget gets unless told otherwise (shares of its limit).
pub const DEFAULT_ALERTS: [f64; 4] = [0.5, 0.75, 0.9, 1.0];

/// How long a budget's period lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Day,
    Month,
}

impl Period {
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "day" => Ok(Period::Day),
            "month" => Ok(Period::Month),
            other => Err(Error::invalid(format!("unknown budget period {other:?}: use \"day\" or \"month\""))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

/// One period of a budget: its id (`2026-03-29` for a day, `2026-03` for a month) and the
/// instants it starts and ends (Unix seconds; it ends when the next one starts).
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub id: String,
    pub starts_at: f64,
    pub resets_at: f64,
}

/// A validated budget. Budgets with the same name share their spending.
#[derive(Debug)]
pub struct BudgetSpec {
    pub name: String,
    pub limit_nanos: i64,
    pub period: Period,
    pub tz: Tz,
    /// Alert thresholds in percent of the limit, ascending, each in 1..=100.
    pub alerts: Vec<u16>,
    /// The escaped hash tag shared by every Redis key of this budget.
    pub(crate) tag: String,
    /// The window last asked for: the hot path reuses it until it ends.
    current: RwLock<Option<Arc<Window>>>,
}

impl BudgetSpec {
    /// `limit_dollars` per `period` in `timezone` (an IANA name such as "Europe/Berlin"),
    /// alerting when spending reaches each of `alerts` (shares of the limit, in (0, 1]).
    pub fn new(name: &str, limit_dollars: f64, period: Period, timezone: &str, alerts: &[f64]) -> Result<Self> {
        if name.is_empty() {
            return Err(Error::invalid("a budget needs a non-empty name"));
        }
        if name.len() > 512 {
            return Err(Error::invalid(format!("budget name is {} bytes long; keep it under 512", name.len())));
        }
        if !(limit_dollars.is_finite() && limit_dollars > 0.0) {
            return Err(Error::invalid(format!(
                "budget {name:?}: the limit must be a positive number of dollars, got {limit_dollars}"
            )));
        }
        if limit_dollars > MAX_LIMIT_DOLLARS {
            return Err(Error::invalid(format!(
                "budget {name:?}: a limit of ${limit_dollars} per {} is above the supported ${MAX_LIMIT_DOLLARS}; \
                 split it into several budgets (by team or feature)",
                period.as_str()
            )));
        }
        let limit_nanos = settle_nanos(limit_dollars)?;
        if limit_nanos == 0 {
            return Err(Error::invalid(format!("budget {name:?}: a limit of ${limit_dollars} rounds to nothing")));
        }
        let tz = parse_time_zone(timezone)
            .map_err(|e| Error::invalid(format!("budget {name:?}: {}", e.to_string().trim_start())))?;
        let mut percents = Vec::with_capacity(alerts.len());
        for &share in alerts {
            percents.push(alert_percent(name, share)?);
        }
        percents.sort_unstable();
        percents.dedup();
        Ok(BudgetSpec {
            name: name.to_owned(),
            limit_nanos,
            period,
            tz,
            alerts: percents,
            tag: format!("bg:{}", keys::escape_tag(name)),
            current: RwLock::new(None),
        })
    }

    /// The limit in dollars.
    pub fn limit(&self) -> f64 {
        dollars(self.limit_nanos)
    }

    /// The nano-dollars at which each alert fires: `(percent, amount)`.
    pub fn alert_amounts(&self) -> impl Iterator<Item = (u16, i64)> + '_ {
        self.alerts.iter().map(|&p| (p, (self.limit_nanos as u128 * p as u128).div_ceil(100) as i64))
    }

    /// The period containing `now_unix` (seconds) in the budget's time zone.
    pub fn window(&self, now_unix: f64) -> Result<Arc<Window>> {
        {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner());
            if let Some(w) = current.as_ref().filter(|w| w.starts_at <= now_unix && now_unix < w.resets_at) {
                return Ok(Arc::clone(w));
            }
        }
        let window = Arc::new(window_at(self.tz, self.period, now_unix)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&window));
        Ok(window)
    }
}

impl PartialEq for BudgetSpec {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.limit_nanos == other.limit_nanos
            && self.period == other.period
            && self.tz == other.tz
            && self.alerts == other.alerts
    }
}

fn alert_percent(name: &str, share: f64) -> Result<u16> {
    if !(share.is_finite() && share > 0.0 && share <= 1.0) {
        return Err(Error::invalid(format!(
            "budget {name:?}: alert thresholds are shares of the limit in (0, 1], such as 0.9 for 90%; got {share}"
        )));
    }
    let percent = (share * 100.0).round();
    if (share * 100.0 - percent).abs() > 1e-6 || percent < 1.0 {
        return Err(Error::invalid(format!(
            "budget {name:?}: alert thresholds are whole percents (0.01 to 1.0, such as 0.75); got {share}"
        )));
    }
    Ok(percent as u16)
}

/// A time zone by its IANA name ("UTC", "Europe/Berlin", "America/New_York").
pub fn parse_time_zone(name: &str) -> Result<Tz> {
    name.parse::<Tz>().map_err(|_| {
        Error::invalid(format!(
            "unknown time zone {name:?}: use an IANA time zone name such as \"Europe/Berlin\", \
             \"America/New_York\" or \"UTC\""
        ))
    })
}

/// Nano-dollars to hold for `dollars`, rounded up (a reservation never holds less than
/// the call may cost).
pub fn reserve_nanos(dollars: f64) -> Result<i64> {
    let nanos = checked_nanos("a reservation", dollars)?;
    let nearest = nanos.round();
    // 0.3 × 1e9 is 300000000.00000006 in binary: that is 300000000, not one more.
    Ok(if (nanos - nearest).abs() <= 1e-12 * nearest.max(1.0) { nearest } else { nanos.ceil() } as i64)
}

/// Nano-dollars of a real cost, rounded to the nearest.
pub fn settle_nanos(dollars: f64) -> Result<i64> {
    Ok(checked_nanos("a cost", dollars)?.round() as i64)
}

fn checked_nanos(what: &str, dollars: f64) -> Result<f64> {
    if !(dollars.is_finite() && dollars >= 0.0) {
        return Err(Error::invalid(format!("{what} must be a number of dollars, 0 or more; got {dollars}")));
    }
    if dollars > 1e9 {
        return Err(Error::invalid(format!("{what} of ${dollars} is beyond any budget; check the unit (dollars)")));
    }
    Ok(dollars * NANOS_PER_DOLLAR)
}

/// Nano-dollars as dollars.
pub fn dollars(nanos: i64) -> f64 {
    nanos as f64 / NANOS_PER_DOLLAR
}

/// The calendar day (`YYYY-MM-DD`) of an instant in a time zone.
pub fn local_day(tz: Tz, unix: f64) -> Result<String> {
    Ok(local_date(tz, seconds(unix)?).format("%Y-%m-%d").to_string())
}

/// Check a day as `YYYY-MM-DD`.
pub fn parse_day(day: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .ok()
        .filter(|_| day.len() == 10)
        .ok_or_else(|| Error::invalid(format!("{day:?} is not a day: write it as YYYY-MM-DD, such as \"2026-03-29\"")))
}

fn seconds(unix: f64) -> Result<i64> {
    // Years 1900 to 9999: anything else is not a clock reading.
    if !(unix.is_finite() && (-2_208_988_800.0..253_402_300_800.0).contains(&unix)) {
        return Err(Error::invalid(format!("now must be a Unix time in seconds, got {unix}")));
    }
    Ok(unix.floor() as i64)
}

fn local_date(tz: Tz, secs: i64) -> NaiveDate {
    let utc = DateTime::<Utc>::from_timestamp(secs, 0).expect("checked by seconds()");
    utc.with_timezone(&tz).date_naive()
}

/// The period of `period` containing `now_unix` in `tz`.
pub fn window_at(tz: Tz, period: Period, now_unix: f64) -> Result<Window> {
    let today = local_date(tz, seconds(now_unix)?);
    let (first, next, id) = match period {
        Period::Day => (today, today.succ_opt(), today.format("%Y-%m-%d").to_string()),
        Period::Month => {
            let first = today.with_day(1).expect("every month has a first day");
            let next = match today.month() {
                12 => NaiveDate::from_ymd_opt(today.year() + 1, 1, 1),
                m => NaiveDate::from_ymd_opt(today.year(), m + 1, 1),
            };
            (first, next, today.format("%Y-%m").to_string())
        }
    };
    let next = next.ok_or_else(|| Error::invalid(format!("now = {now_unix} is past the calendar's end")))?;
    Ok(Window { id, starts_at: start_of_day(tz, first) as f64, resets_at: start_of_day(tz, next) as f64 })
}

/// The first instant (Unix seconds) of a local calendar day.
fn start_of_day(tz: Tz, day: NaiveDate) -> i64 {
    let midnight = day.and_hms_opt(0, 0, 0).expect("midnight exists on every date");
    match tz.from_local_datetime(&midnight) {
        LocalResult::Single(t) => t.timestamp(),
        // Clocks went back over midnight: the day starts at the first of the two.
        LocalResult::Ambiguous(first, _) => first.timestamp(),
        LocalResult::None => {
            // Clocks jumped over midnight: the day starts at the jump. Offsets lie within
            // ±15 hours, so `before` is on an earlier day and `after` on this one.
            let naive = midnight.and_utc().timestamp();
            let (mut before, mut after) = (naive - 86_400, naive + 86_400);
            while after - before > 1 {
                let mid = before + (after - before) / 2;
                if local_date(tz, mid) >= day {
                    after = mid;
                } else {
                    before = mid;
                }
            }
            after
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(tz: Tz, y: i32, m: u32, d: u32, h: u32, min: u32) -> f64 {
        tz.with_ymd_and_hms(y, m, d, h, min, 0).earliest().unwrap().timestamp() as f64
    }

    fn spec(tz: &str, period: Period) -> BudgetSpec {
        BudgetSpec::new("b", 10.0, period, tz, &DEFAULT_ALERTS).unwrap()
    }

    #[test]
    fn a_utc_day() {
        let w = spec("UTC", Period::Day).window(unix(Tz::UTC, 2026, 3, 29, 13, 5)).unwrap();
        assert_eq!(w.id, "2026-03-29");
        assert_eq!(w.starts_at, unix(Tz::UTC, 2026, 3, 29, 0, 0));
        assert_eq!(w.resets_at, unix(Tz::UTC, 2026, 3, 30, 0, 0));
        assert_eq!(w.resets_at - w.starts_at, 86_400.0);
    }

    #[test]
    fn a_day_in_other_zones() {
        let ny = spec("America/New_York", Period::Day);
        // 02:30 UTC on the 15th is still the evening of the 14th in New York (UTC-5).
        let w = ny.window(unix(Tz::UTC, 2026, 1, 15, 2, 30)).unwrap();
        assert_eq!(w.id, "2026-01-14");
        assert_eq!(w.starts_at, unix(Tz::UTC, 2026, 1, 14, 5, 0));
        assert_eq!(w.resets_at, unix(Tz::UTC, 2026, 1, 15, 5, 0));

        let kolkata = spec("Asia/Kolkata", Period::Day);
        // 19:00 UTC is 00:30 the next day in Kolkata (UTC+05:30).
        let w = kolkata.window(unix(Tz::UTC, 2026, 6, 1, 19, 0)).unwrap();
        assert_eq!(w.id, "2026-06-02");
        assert_eq!(w.starts_at, unix(Tz::UTC, 2026, 6, 1, 18, 30));
        assert_eq!(w.resets_at, unix(Tz::UTC, 2026, 6, 2, 18, 30));
    }

    #[test]
    fn months_roll_over_into_the_next_year() {
        let m = spec("UTC", Period::Month);
        let w = m.window(unix(Tz::UTC, 2026, 12, 31, 23, 59)).unwrap();
        assert_eq!(w.id, "2026-12");
        assert_eq!(w.starts_at, unix(Tz::UTC, 2026, 12, 1, 0, 0));
        assert_eq!(w.resets_at, unix(Tz::UTC, 2027, 1, 1, 0, 0));
        let next = m.window(w.resets_at).unwrap();
        assert_eq!(next.id, "2027-01");
        assert_eq!(next.starts_at, w.resets_at);
        // February of a leap year.
        let feb = m.window(unix(Tz::UTC, 2028, 2, 29, 12, 0)).unwrap();
        assert_eq!(feb.resets_at - feb.starts_at, 29.0 * 86_400.0);
    }

    #[test]
    fn dst_days_in_berlin_are_23_and_25_hours_long() {
        let berlin = spec("Europe/Berlin", Period::Day);
        let spring = berlin.window(unix(Tz::UTC, 2026, 3, 29, 12, 0)).unwrap();
        assert_eq!(spring.id, "2026-03-29");
        assert_eq!(spring.starts_at, unix(Tz::UTC, 2026, 3, 28, 23, 0));
        assert_eq!(spring.resets_at - spring.starts_at, 23.0 * 3600.0);
        let autumn = berlin.window(unix(Tz::UTC, 2026, 10, 25, 12, 0)).unwrap();
        assert_eq!(autumn.id, "2026-10-25");
        assert_eq!(autumn.starts_at, unix(Tz::UTC, 2026, 10, 24, 22, 0));
        assert_eq!(autumn.resets_at - autumn.starts_at, 25.0 * 3600.0);
    }

    #[test]
    fn a_day_whose_midnight_never_happened_starts_at_the_jump() {
        // Santiago moved its clocks from 00:00 to 01:00 on 2022-09-11.
        let santiago = spec("America/Santiago", Period::Day);
        let w = santiago.window(unix(Tz::UTC, 2022, 9, 11, 12, 0)).unwrap();
        assert_eq!(w.id, "2022-09-11");
        assert_eq!(w.starts_at, unix(Tz::UTC, 2022, 9, 11, 4, 0));
        assert_eq!(w.resets_at - w.starts_at, 23.0 * 3600.0);
        // And the previous day ends exactly there.
        assert_eq!(santiago.window(w.starts_at - 1.0).unwrap().resets_at, w.starts_at);
    }

    #[test]
    fn every_instant_of_a_window_maps_back_to_it() {
        let berlin = spec("Europe/Berlin", Period::Day);
        let mut t = unix(Tz::UTC, 2026, 3, 27, 0, 0);
        while t < unix(Tz::UTC, 2026, 4, 1, 0, 0) {
            let w = berlin.window(t).unwrap();
            assert!(w.starts_at <= t && t < w.resets_at, "{t} outside {w:?}");
            t += 1800.0;
        }
    }

    #[test]
    fn the_cached_window_is_reused_until_it_ends() {
        let b = spec("UTC", Period::Day);
        let t = unix(Tz::UTC, 2026, 5, 5, 1, 0);
        let first = b.window(t).unwrap();
        assert!(Arc::ptr_eq(&first, &b.window(t + 3600.0).unwrap()));
        assert_eq!(b.window(first.resets_at).unwrap().id, "2026-05-06");
        // An earlier instant (a caller's `now` in the past) is not served from the cache.
        assert_eq!(b.window(t - 86_400.0).unwrap().id, "2026-05-04");
    }

    #[test]
    fn bad_budgets_say_what_is_wrong() {
        let err = |r: Result<BudgetSpec>| r.unwrap_err().to_string();
        let e = err(BudgetSpec::new("b", 1.0, Period::Day, "Mars/Olympus", &[]));
        assert!(e.contains("Mars/Olympus") && e.contains("Europe/Berlin"), "{e}");
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = err(BudgetSpec::new("b", bad, Period::Day, "UTC", &[]));
            assert!(e.contains("positive number of dollars"), "{e}");
        }
        assert!(err(BudgetSpec::new("b", 2e6, Period::Day, "UTC", &[])).contains("split"));
        assert!(err(BudgetSpec::new("", 1.0, Period::Day, "UTC", &[])).contains("non-empty name"));
        for bad in [0.0, 1.5, -0.5, f64::NAN] {
            let e = err(BudgetSpec::new("b", 1.0, Period::Day, "UTC", &[bad]));
            assert!(e.contains("(0, 1]"), "{e}");
        }
        assert!(err(BudgetSpec::new("b", 1.0, Period::Day, "UTC", &[0.333])).contains("whole percents"));
        assert!(Period::parse("week").unwrap_err().to_string().contains("\"day\" or \"month\""));
    }

    #[test]
    fn thresholds_are_sorted_percents() {
        let b = BudgetSpec::new("b", 3.0, Period::Day, "UTC", &[1.0, 0.5, 0.9, 0.5]).unwrap();
        assert_eq!(b.alerts, vec![50, 90, 100]);
        let amounts: Vec<_> = b.alert_amounts().collect();
        assert_eq!(amounts, vec![(50, 1_500_000_000), (90, 2_700_000_000), (100, 3_000_000_000)]);
    }

    #[test]
    fn amounts_round_as_documented() {
        assert_eq!(reserve_nanos(0.3).unwrap(), 300_000_000);
        assert_eq!(reserve_nanos(1.000_000_000_4).unwrap(), 1_000_000_001);
        assert_eq!(settle_nanos(1.000_000_000_4).unwrap(), 1_000_000_000);
        assert_eq!(settle_nanos(0.000_000_000_6).unwrap(), 1);
        assert!(reserve_nanos(-0.01).is_err());
        assert!(settle_nanos(f64::NAN).is_err());
        assert!(reserve_nanos(2e9).unwrap_err().to_string().contains("check the unit"));
    }

    #[test]
    fn days_are_checked() {
        assert!(parse_day("2026-03-29").is_ok());
        for bad in ["2026-3-29", "2026-02-30", "yesterday", "2026-03-29T00:00"] {
            assert!(parse_day(bad).unwrap_err().to_string().contains("YYYY-MM-DD"), "{bad}");
        }
        assert_eq!(local_day(Tz::Asia__Kolkata, unix(Tz::UTC, 2026, 6, 1, 19, 0)).unwrap(), "2026-06-02");
    }
}
