//! The dollar-budget ledger: reserve a call's worst-case cost on every budget that applies,
//! all or nothing, then settle it with the real cost (or release it when nothing was
//! spent). Embedded (in process) or shared by a fleet through the pod's Redis.
//!
//! A reservation lapses by itself after its lease (its pod died before settling). Every
//! settled cost is also added to a per-day spend record by model, feature, user and team,
//! the day taken in the ledger's report time zone, for reports.

pub use super::holds::{Alert, HeldPart};
use super::holds::{InWindow, SPEND_DAYS_KEPT};
use super::ledger_local::LocalLedger;
use super::ledger_redis::RedisLedger;
use crate::budget::{dollars, local_day, parse_day, reserve_nanos, settle_nanos, BudgetSpec, Window};
use crate::error::{Error, Result};
use crate::store::RedisStore;
use chrono::{Days, NaiveDate};
use chrono_tz::Tz;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest a reservation may be held before it lapses.
pub const MAX_LEASE: Duration = Duration::from_secs(86_400);

/// Separates the labels of a spend record.
const LABEL_SEPARATOR: char = '\x1f';

/// What a settled cost is recorded under (empty when not known).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct SpendLabels {
    pub model: String,
    pub feature: String,
    pub user: String,
    pub team: String,
}

impl SpendLabels {
    fn joined(&self) -> Result<String> {
        let fields = [("model", &self.model), ("feature", &self.feature), ("user", &self.user), ("team", &self.team)];
        for (name, value) in fields {
            if value.contains(LABEL_SEPARATOR) {
                return Err(Error::invalid(format!(
                    "the {name} label {value:?} contains the character \\x1f, which separates labels in spend \
                     records; remove it"
                )));
            }
        }
        let sep = LABEL_SEPARATOR.to_string();
        Ok([&self.model, &self.feature, &self.user, &self.team].map(String::as_str).join(&sep))
    }

    fn split(joined: &str) -> Option<Self> {
        let mut parts = joined.split(LABEL_SEPARATOR).map(str::to_owned);
        let labels =
            SpendLabels { model: parts.next()?, feature: parts.next()?, user: parts.next()?, team: parts.next()? };
        parts.next().is_none().then_some(labels)
    }
}

/// Where one budget's period stands, in dollars.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetStatus {
    pub period: String,
    pub spent: f64,
    /// Held by live reservations.
    pub reserved: f64,
    pub limit: f64,
    pub resets_at: f64,
}

/// One spend record of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendRow {
    pub day: String,
    pub model: String,
    pub feature: String,
    pub user: String,
    pub team: String,
    pub dollars: f64,
}

/// Proof of a reservation: the amount held on each budget, to settle or release once.
#[derive(Debug)]
pub struct BudgetReservation {
    pub nanos: i64,
    pub parts: Vec<HeldPart>,
    /// When it was made (the caller's Unix seconds): the day its spend is recorded under.
    pub made_at: f64,
    ledger: u64,
    ended: AtomicBool,
}

impl BudgetReservation {
    /// The amount held on each budget, in dollars.
    pub fn dollars(&self) -> f64 {
        dollars(self.nanos)
    }

    /// Whether it was settled or released.
    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }
}

/// A settlement (or release) checked and claimed, to apply now or in the background.
#[derive(Debug)]
pub struct Settlement {
    nanos: i64,
    /// `(day, joined labels)` of the spend record, when something was spent.
    record: Option<(String, String)>,
}

enum Backend {
    Local(LocalLedger),
    Redis(RedisLedger),
}

/// Dollar budgets, in process or shared through Redis.
pub struct Ledger {
    /// Tells this ledger's reservations from another's.
    id: u64,
    backend: Backend,
    report_tz: Tz,
}

static NEXT_LEDGER: AtomicU64 = AtomicU64::new(1);

impl Ledger {
    /// A ledger in Redis when given the pod's Redis handle, in process otherwise. Spend
    /// records are kept by day in `report_tz`.
    pub fn new(store: Option<Arc<RedisStore>>, report_tz: Tz) -> Self {
        let backend = match store {
            Some(store) => Backend::Redis(RedisLedger::new(store)),
            None => Backend::Local(LocalLedger::new()),
        };
        Ledger { id: NEXT_LEDGER.fetch_add(1, Ordering::Relaxed), backend, report_tz }
    }

    pub fn is_embedded(&self) -> bool {
        matches!(self.backend, Backend::Local(_))
    }

    pub fn report_tz(&self) -> Tz {
        self.report_tz
    }

    /// Reserve without waiting on the embedded ledger; `None` when it is shared (use
    /// `reserve`).
    pub fn reserve_embedded(
        &self,
        budgets: &[Arc<BudgetSpec>],
        dollars: f64,
        lease: Duration,
        now_unix: f64,
    ) -> Option<Result<BudgetReservation>> {
        let Backend::Local(local) = &self.backend else { return None };
        Some(self.checked(budgets, dollars, lease, now_unix).and_then(|(windows, nanos)| {
            let now = Instant::now();
            let parts = local.reserve(&windows, nanos, now + lease, now, now_unix)?;
            Ok(self.reservation(nanos, parts, now_unix))
        }))
    }

    /// Hold `dollars` on every budget (in each one's period containing `now_unix`), or on
    /// none: `Error::BudgetExceeded` names the budget that refused. The holds lapse after
    /// `lease` unless settled or released. With no budgets the reservation holds nothing,
    /// and settling it only records the spend.
    pub async fn reserve(
        &self,
        budgets: &[Arc<BudgetSpec>],
        dollars: f64,
        lease: Duration,
        now_unix: f64,
    ) -> Result<BudgetReservation> {
        if let Some(done) = self.reserve_embedded(budgets, dollars, lease, now_unix) {
            return done;
        }
        let Backend::Redis(redis) = &self.backend else { unreachable!("embedded handled above") };
        let (windows, nanos) = self.checked(budgets, dollars, lease, now_unix)?;
        let parts = redis.reserve(&windows, nanos, lease, now_unix).await?;
        Ok(self.reservation(nanos, parts, now_unix))
    }

    fn checked(
        &self,
        budgets: &[Arc<BudgetSpec>],
        dollars: f64,
        lease: Duration,
        now_unix: f64,
    ) -> Result<(Vec<InWindow>, i64)> {
        if lease.is_zero() || lease > MAX_LEASE {
            return Err(Error::invalid(format!(
                "a reservation's lease must be between 0 and {} seconds, got {}",
                MAX_LEASE.as_secs(),
                lease.as_secs_f64()
            )));
        }
        let nanos = reserve_nanos(dollars)?;
        let windows = budgets.iter().map(|b| Ok((Arc::clone(b), b.window(now_unix)?))).collect::<Result<Vec<_>>>()?;
        Ok((windows, nanos))
    }

    fn reservation(&self, nanos: i64, parts: Vec<HeldPart>, made_at: f64) -> BudgetReservation {
        BudgetReservation { nanos, parts, made_at, ledger: self.id, ended: AtomicBool::new(false) }
    }

    /// Settle in place on the embedded ledger; `None` when it is shared (use `settle`, or
    /// `claim_settlement` and `apply`).
    pub fn settle_embedded(
        &self,
        reservation: &BudgetReservation,
        actual_dollars: f64,
        labels: Option<&SpendLabels>,
    ) -> Option<Result<Vec<Alert>>> {
        let Backend::Local(local) = &self.backend else { return None };
        Some(
            self.claim_settlement(reservation, actual_dollars, labels)
                .map(|settlement| self.apply_local(local, reservation, &settlement)),
        )
    }

    /// End the reservation and add `actual_dollars` to each budget's period (the one it was
    /// made in), also when the reservation had lapsed; returns the alerts this crossed for
    /// the first time, fleet-wide. The cost is recorded under `labels`; `None`: not recorded
    /// (a second hold on the same call, whose cost another settlement records).
    pub async fn settle(
        &self,
        reservation: &BudgetReservation,
        actual_dollars: f64,
        labels: Option<&SpendLabels>,
    ) -> Result<Vec<Alert>> {
        let settlement = self.claim_settlement(reservation, actual_dollars, labels)?;
        self.apply(reservation, settlement).await
    }

    /// Check a settlement and claim the reservation for it, so that a second settle or
    /// release fails here, not out of sight when `apply` runs in the background.
    pub fn claim_settlement(
        &self,
        reservation: &BudgetReservation,
        actual_dollars: f64,
        labels: Option<&SpendLabels>,
    ) -> Result<Settlement> {
        let nanos = settle_nanos(actual_dollars)?;
        let record = match labels {
            Some(labels) if nanos > 0 => Some((local_day(self.report_tz, reservation.made_at)?, labels.joined()?)),
            _ => None,
        };
        self.claim(reservation)?;
        Ok(Settlement { nanos, record })
    }

    /// Claim the reservation to give it back whole (see `claim_settlement`).
    pub fn claim_release(&self, reservation: &BudgetReservation) -> Result<Settlement> {
        self.claim(reservation)?;
        Ok(Settlement { nanos: 0, record: None })
    }

    /// Give the reservation back without spending, in place on the embedded ledger; `None`
    /// when it is shared (use `release`).
    pub fn release_embedded(&self, reservation: &BudgetReservation) -> Option<Result<()>> {
        let Backend::Local(local) = &self.backend else { return None };
        Some(self.claim_release(reservation).map(|s| {
            self.apply_local(local, reservation, &s);
        }))
    }

    /// Give the reservation back without spending (the call never reached upstream).
    pub async fn release(&self, reservation: &BudgetReservation) -> Result<()> {
        let settlement = self.claim_release(reservation)?;
        self.apply(reservation, settlement).await.map(|_| ())
    }

    /// Apply a claimed settlement or release.
    pub async fn apply(&self, reservation: &BudgetReservation, settlement: Settlement) -> Result<Vec<Alert>> {
        match &self.backend {
            Backend::Local(local) => Ok(self.apply_local(local, reservation, &settlement)),
            Backend::Redis(redis) => {
                let alerts = redis.settle(&reservation.parts, settlement.nanos, reservation.made_at).await?;
                if let Some((day, labels)) = &settlement.record {
                    redis.record(day, labels, settlement.nanos).await?;
                }
                Ok(alerts)
            }
        }
    }

    fn apply_local(&self, local: &LocalLedger, reservation: &BudgetReservation, settlement: &Settlement) -> Vec<Alert> {
        let alerts = local.settle(&reservation.parts, settlement.nanos, Instant::now(), reservation.made_at);
        if let Some((day, labels)) = &settlement.record {
            local.record(day, &oldest_kept(day), labels, settlement.nanos);
        }
        alerts
    }

    fn claim(&self, reservation: &BudgetReservation) -> Result<()> {
        if reservation.ledger != self.id {
            return Err(Error::invalid(
                "this budget reservation belongs to another ledger; settle or release it with the ledger that made it",
            ));
        }
        if reservation.ended.swap(true, Ordering::AcqRel) {
            return Err(Error::invalid(
                "this budget reservation was already settled or released; settle or release each reservation once",
            ));
        }
        Ok(())
    }

    /// Where a budget stands in its period containing `now_unix`, without waiting; `None`
    /// when the ledger is shared (use `status`).
    pub fn status_embedded(&self, budget: &BudgetSpec, now_unix: f64) -> Option<Result<BudgetStatus>> {
        let Backend::Local(local) = &self.backend else { return None };
        Some(budget.window(now_unix).map(|window| {
            let (spent, reserved) = local.totals(budget, &window, Instant::now());
            status(budget, &window, spent, reserved)
        }))
    }

    /// Where a budget stands in its period containing `now_unix`.
    pub async fn status(&self, budget: &BudgetSpec, now_unix: f64) -> Result<BudgetStatus> {
        if let Some(done) = self.status_embedded(budget, now_unix) {
            return done;
        }
        let Backend::Redis(redis) = &self.backend else { unreachable!("embedded handled above") };
        let window = budget.window(now_unix)?;
        let (spent, reserved) = redis.totals(budget, &window).await?;
        Ok(status(budget, &window, spent, reserved))
    }

    /// The spend records of `days` (`YYYY-MM-DD` in the report time zone), without waiting;
    /// `None` when the ledger is shared (use `report`).
    pub fn report_embedded(&self, days: &[String]) -> Option<Result<Vec<SpendRow>>> {
        let Backend::Local(local) = &self.backend else { return None };
        Some(unique_days(days).and_then(|days| rows(days.into_iter().map(|d| (d, local.records(d))))))
    }

    /// The spend records of `days` (`YYYY-MM-DD` in the report time zone), sorted by day,
    /// then model, feature, user and team.
    pub async fn report(&self, days: &[String]) -> Result<Vec<SpendRow>> {
        if let Some(done) = self.report_embedded(days) {
            return done;
        }
        let Backend::Redis(redis) = &self.backend else { unreachable!("embedded handled above") };
        let days = unique_days(days)?;
        let mut found = Vec::with_capacity(days.len());
        for day in days {
            found.push((day, redis.records(day).await?));
        }
        rows(found.into_iter())
    }
}

fn status(budget: &BudgetSpec, window: &Window, spent: i64, reserved: i64) -> BudgetStatus {
    BudgetStatus {
        period: window.id.clone(),
        spent: dollars(spent),
        reserved: dollars(reserved.max(0)),
        limit: budget.limit(),
        resets_at: window.resets_at,
    }
}

/// The days asked for, checked, each once.
fn unique_days(days: &[String]) -> Result<Vec<&str>> {
    let mut unique: Vec<&str> = Vec::with_capacity(days.len());
    for day in days {
        parse_day(day)?;
        if !unique.contains(&day.as_str()) {
            unique.push(day);
        }
    }
    Ok(unique)
}

/// The oldest day kept beside `day` (`SPEND_DAYS_KEPT` days before it).
fn oldest_kept(day: &str) -> String {
    NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.checked_sub_days(Days::new(SPEND_DAYS_KEPT as u64)))
        .map_or_else(String::new, |d| d.format("%Y-%m-%d").to_string())
}

fn rows<'a>(days: impl Iterator<Item = (&'a str, Vec<(String, i64)>)>) -> Result<Vec<SpendRow>> {
    let mut rows: Vec<SpendRow> = Vec::new();
    for (day, records) in days {
        for (joined, nanos) in records {
            let l = SpendLabels::split(&joined).ok_or_else(|| {
                Error::StoreUnavailable(format!(
                    "{}: a malformed spend record {joined:?} (is another fleetgate version sharing this Redis?)",
                    crate::store::keys::spend(day)
                ))
            })?;
            rows.push(SpendRow {
                day: day.to_owned(),
                model: l.model,
                feature: l.feature,
                user: l.user,
                team: l.team,
                dollars: dollars(nanos),
            });
        }
    }
    rows.sort_by(|a, b| {
        (&a.day, &a.model, &a.feature, &a.user, &a.team).cmp(&(&b.day, &b.model, &b.feature, &b.user, &b.team))
    });
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Period;

    const NOW: f64 = 1_774_785_600.0; // 2026-03-29T12:00:00Z
    const LEASE: Duration = Duration::from_secs(600);

    fn budget(name: &str, limit: f64, alerts: &[f64]) -> Arc<BudgetSpec> {
        Arc::new(BudgetSpec::new(name, limit, Period::Day, "UTC", alerts).unwrap())
    }

    fn ledger() -> Ledger {
        Ledger::new(None, Tz::UTC)
    }

    fn reserve(ledger: &Ledger, budgets: &[Arc<BudgetSpec>], dollars: f64) -> Result<BudgetReservation> {
        ledger.reserve_embedded(budgets, dollars, LEASE, NOW).expect("embedded")
    }

    fn settle(ledger: &Ledger, r: &BudgetReservation, dollars: f64) -> Vec<u16> {
        let alerts = ledger.settle_embedded(r, dollars, Some(&SpendLabels::default())).expect("embedded").unwrap();
        alerts.iter().map(|a| (a.threshold * 100.0).round() as u16).collect()
    }

    fn status(ledger: &Ledger, b: &BudgetSpec) -> BudgetStatus {
        ledger.status_embedded(b, NOW).expect("embedded").unwrap()
    }

    #[test]
    fn a_reservation_is_all_or_nothing_across_budgets() {
        let ledger = ledger();
        let (roomy, tight) = (budget("roomy", 10.0, &[]), budget("tight", 1.0, &[]));
        let _held = reserve(&ledger, &[Arc::clone(&tight)], 0.8).unwrap();
        let err = reserve(&ledger, &[Arc::clone(&roomy), Arc::clone(&tight)], 0.5).unwrap_err();
        match &err {
            Error::BudgetExceeded { budget, spent, limit, requested, period, .. } => {
                assert_eq!((budget.as_str(), *spent, *limit, *requested), ("tight", 0.8, 1.0, 0.5));
                assert_eq!(period, "2026-03-29");
            }
            other => panic!("expected BudgetExceeded, got {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains("\"tight\"") && message.contains("2026-03-30T00:00:00Z"), "{message}");
        assert!(message.contains("raise its limit"), "{message}");
        assert_eq!(status(&ledger, &roomy).reserved, 0.0, "the roomy budget was given back");
        let both = reserve(&ledger, &[Arc::clone(&roomy), Arc::clone(&tight)], 0.2).unwrap();
        assert_eq!(both.parts.len(), 2);
        assert_eq!(status(&ledger, &roomy).reserved, 0.2);
    }

    #[test]
    fn an_amount_above_the_limit_is_refused() {
        let ledger = ledger();
        let b = budget("small", 1.0, &[]);
        assert!(matches!(reserve(&ledger, &[b], 1.01), Err(Error::BudgetExceeded { .. })));
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_limit() {
        let ledger = Arc::new(ledger());
        let b = budget("shared", 5.0, &[]);
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let (ledger, b) = (Arc::clone(&ledger), Arc::clone(&b));
                std::thread::spawn(move || {
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t + 1);
                    let mut next = move || {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x
                    };
                    let mut admitted = 0;
                    for _ in 0..200 {
                        let dollars = (next() % 500) as f64 / 1000.0 + 0.001;
                        let Ok(r) = reserve(&ledger, &[Arc::clone(&b)], dollars) else { continue };
                        admitted += 1;
                        let s = status(&ledger, &b);
                        assert!(s.spent + s.reserved <= s.limit + 1e-9, "{s:?}");
                        match next() % 3 {
                            0 => {
                                settle(&ledger, &r, dollars * (next() % 100) as f64 / 100.0);
                            }
                            1 => ledger.release_embedded(&r).unwrap().unwrap(),
                            _ => {} // never settled: held until it lapses
                        }
                    }
                    admitted
                })
            })
            .collect();
        let admitted: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let s = status(&ledger, &b);
        assert!(admitted > 0);
        assert!(s.spent + s.reserved <= 5.0 + 1e-9 && s.spent <= 5.0, "{s:?}");
        assert!(s.spent > 0.0, "{s:?}");
    }

    #[test]
    fn alerts_fire_once_each() {
        let ledger = ledger();
        let b = budget("alerting", 1.0, &[0.5, 0.9, 1.0]);
        let spend = |dollars| settle(&ledger, &reserve(&ledger, &[Arc::clone(&b)], dollars).unwrap(), dollars);
        assert_eq!(spend(0.6), vec![50]);
        assert_eq!(spend(0.2), Vec::<u16>::new());
        assert_eq!(spend(0.15), vec![90]);
        assert_eq!(spend(0.05), vec![100]);
        assert_eq!(spend(0.0), Vec::<u16>::new());

        let other = budget("leaping", 1.0, &[0.5, 0.9, 1.0]);
        let r = reserve(&ledger, &[Arc::clone(&other)], 1.0).unwrap();
        let alerts = ledger.settle_embedded(&r, 0.95, Some(&SpendLabels::default())).unwrap().unwrap();
        assert_eq!(alerts.len(), 2, "one settle crossing two thresholds fires both");
        assert_eq!(
            alerts[1],
            Alert { budget: "leaping".into(), threshold: 0.9, spent: 0.95, limit: 1.0, period: "2026-03-29".into() }
        );
    }

    #[test]
    fn a_refusal_fires_no_alert_and_leaves_the_full_one_to_spending() {
        let ledger = ledger();
        let b = budget("refusing", 1.0, &[0.5, 1.0]);
        // Worst cases fill the budget while little is spent: the refusals say nothing of spend.
        let held = reserve(&ledger, &[Arc::clone(&b)], 0.9).unwrap();
        assert!(reserve(&ledger, &[Arc::clone(&b)], 0.2).is_err());
        assert_eq!(settle(&ledger, &held, 0.2), Vec::<u16>::new());
        // Spending the whole limit fires both, once.
        let r = reserve(&ledger, &[Arc::clone(&b)], 0.8).unwrap();
        assert_eq!(settle(&ledger, &r, 0.8), vec![50, 100]);
        assert!(reserve(&ledger, &[Arc::clone(&b)], 0.1).is_err());
    }

    #[test]
    fn a_reservation_ends_once() {
        let (ledger, other) = (ledger(), Ledger::new(None, Tz::UTC));
        let b = budget("once", 1.0, &[]);
        let r = reserve(&ledger, &[Arc::clone(&b)], 0.5).unwrap();
        let foreign = other.settle_embedded(&r, 0.1, Some(&SpendLabels::default())).unwrap().unwrap_err();
        assert!(foreign.to_string().contains("another ledger"), "{foreign}");
        settle(&ledger, &r, 0.25);
        assert!(r.is_ended());
        let again = ledger.settle_embedded(&r, 0.25, Some(&SpendLabels::default())).unwrap().unwrap_err();
        assert!(matches!(again, Error::InvalidArgument(_)) && again.to_string().contains("already settled"), "{again}");
        assert!(ledger.release_embedded(&r).unwrap().is_err());
        let s = status(&ledger, &b);
        assert_eq!((s.spent, s.reserved), (0.25, 0.0));
    }

    #[test]
    fn release_gives_back_without_spending() {
        let ledger = ledger();
        let b = budget("released", 1.0, &[]);
        let r = reserve(&ledger, &[Arc::clone(&b)], 0.7).unwrap();
        assert_eq!(status(&ledger, &b).reserved, 0.7);
        ledger.release_embedded(&r).unwrap().unwrap();
        let s = status(&ledger, &b);
        assert_eq!((s.spent, s.reserved, s.resets_at), (0.0, 0.0, NOW + 12.0 * 3600.0));
    }

    #[test]
    fn settled_costs_are_reported_by_day_and_labels() {
        let ledger = Ledger::new(None, "Asia/Kolkata".parse().unwrap());
        let b = budget("reported", 100.0, &[]);
        let labels = |model: &str, user: &str| SpendLabels {
            model: model.into(),
            feature: "chat".into(),
            user: user.into(),
            team: String::new(),
        };
        for (model, user, cost) in [("gpt-4.1", "u1", 0.5), ("gpt-4.1", "u1", 0.25), ("gpt-4.1-mini", "u2", 0.01)] {
            let r = reserve(&ledger, &[Arc::clone(&b)], 1.0).unwrap();
            ledger.settle_embedded(&r, cost, Some(&labels(model, user))).unwrap().unwrap();
        }
        let released = reserve(&ledger, &[Arc::clone(&b)], 1.0).unwrap();
        ledger.release_embedded(&released).unwrap().unwrap();
        // 12:00 UTC is 17:30 in Kolkata: the same day.
        let rows = ledger.report_embedded(&["2026-03-29".into(), "2026-03-28".into()]).unwrap().unwrap();
        let got: Vec<_> = rows.iter().map(|r| (r.day.as_str(), r.model.as_str(), r.user.as_str(), r.dollars)).collect();
        assert_eq!(got, vec![("2026-03-29", "gpt-4.1", "u1", 0.75), ("2026-03-29", "gpt-4.1-mini", "u2", 0.01)]);
        assert_eq!(rows[0].feature, "chat");
        let bad = ledger.report_embedded(&["29/03/2026".into()]).unwrap().unwrap_err();
        assert!(bad.to_string().contains("YYYY-MM-DD"), "{bad}");
        let r = reserve(&ledger, &[b], 1.0).unwrap();
        let sep = ledger.settle_embedded(&r, 0.1, Some(&labels("a\x1fb", "u"))).unwrap().unwrap_err();
        assert!(sep.to_string().contains("model label"), "{sep}");
        assert!(!r.is_ended(), "a refused settlement leaves the reservation to settle again");
    }

    #[test]
    fn a_settlement_without_labels_spends_on_its_budgets_and_records_nothing() {
        let ledger = ledger();
        let b = budget("project", 10.0, &[]);
        let r = reserve(&ledger, &[Arc::clone(&b)], 1.0).unwrap();
        assert!(ledger.settle_embedded(&r, 0.4, None).unwrap().unwrap().is_empty());
        assert_eq!(status(&ledger, &b).spent, 0.4);
        assert!(ledger.report_embedded(&["2026-03-29".into()]).unwrap().unwrap().is_empty());
    }

    #[test]
    fn a_call_under_no_budget_still_records_its_spend() {
        let ledger = ledger();
        let r = reserve(&ledger, &[], 5.0).unwrap();
        assert!(r.parts.is_empty());
        let labels = SpendLabels { model: "gpt-4.1".into(), ..Default::default() };
        assert!(ledger.settle_embedded(&r, 0.5, Some(&labels)).unwrap().unwrap().is_empty());
        let rows = ledger.report_embedded(&["2026-03-29".into()]).unwrap().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].model.as_str(), rows[0].dollars), ("gpt-4.1", 0.5));
    }

    #[test]
    fn periods_roll_over() {
        let ledger = ledger();
        let b = budget("daily", 1.0, &[]);
        let r = reserve(&ledger, &[Arc::clone(&b)], 1.0).unwrap();
        settle(&ledger, &r, 1.0);
        assert!(reserve(&ledger, &[Arc::clone(&b)], 0.1).is_err());
        let tomorrow = NOW + 86_400.0;
        let next = ledger.reserve_embedded(&[Arc::clone(&b)], 0.1, LEASE, tomorrow).unwrap().unwrap();
        assert_eq!(next.parts[0].window.id, "2026-03-30");
        let s = ledger.status_embedded(&b, tomorrow).unwrap().unwrap();
        assert_eq!((s.period.as_str(), s.spent, s.reserved), ("2026-03-30", 0.0, 0.1));
    }

    #[test]
    fn bad_reservations_say_what_is_wrong() {
        let ledger = ledger();
        let b = budget("checked", 1.0, &[]);
        let err = |r: Option<Result<BudgetReservation>>| r.unwrap().unwrap_err().to_string();
        assert!(err(ledger.reserve_embedded(&[Arc::clone(&b)], -1.0, LEASE, NOW)).contains("0 or more"));
        assert!(err(ledger.reserve_embedded(&[Arc::clone(&b)], 0.1, Duration::ZERO, NOW)).contains("lease"));
        assert!(err(ledger.reserve_embedded(&[b], 0.1, LEASE, f64::NAN)).contains("Unix time"));
    }
}
