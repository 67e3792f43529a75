//! The embedded ledger: budgets of one process, in memory. One lock covers every budget, so
//! a reservation on several budgets is atomic here (on Redis it is all-or-nothing, budget
//! by budget). Reservations lapse on the process's monotonic clock.

use super::holds::{exceeded, Alert, HeldPart, Hold, InWindow};
use crate::budget::{BudgetSpec, Window};
use crate::error::Result;
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One period of one budget.
#[derive(Debug, Default)]
struct PeriodState {
    spent: i64,
    reserved: i64,
    /// Live reservations by (expiry, id) → nano-dollars.
    held: BTreeMap<(Instant, u64), i64>,
    /// Bit `p` set once the alert at `p` percent has fired.
    alerted: u128,
    /// When the period ends (Unix seconds), to forget it a day later.
    resets_at: f64,
}

impl PeriodState {
    fn purge(&mut self, now: Instant) {
        while let Some(entry) = self.held.first_entry() {
            if entry.key().0 > now {
                break;
            }
            self.reserved -= entry.remove();
        }
    }

    /// Mark the alert at `percent` fired; false when it already had.
    fn fire(&mut self, percent: u16) -> bool {
        let bit = 1u128 << percent;
        let first = self.alerted & bit == 0;
        self.alerted |= bit;
        first
    }

    /// End a hold if it is still live (a lapsed one was given back when it was purged).
    fn end(&mut self, hold: &Hold) {
        if let Hold::Local { expires, id } = hold {
            if let Some(amount) = self.held.remove(&(*expires, *id)) {
                self.reserved -= amount;
            }
        }
    }
}

#[derive(Default)]
struct Periods {
    /// Budget name → period id → state.
    by_budget: FxHashMap<String, FxHashMap<String, PeriodState>>,
    /// The earliest instant (Unix seconds) at which some period can be forgotten.
    forget_after: f64,
}

impl Periods {
    fn state(&mut self, budget: &BudgetSpec, window: &Window, now_unix: f64) -> &mut PeriodState {
        if !self.by_budget.get(&budget.name).is_some_and(|p| p.contains_key(&window.id)) {
            self.forget_ended(now_unix);
            self.forget_after = self.forget_after.min(window.resets_at + 86_400.0);
        }
        if !self.by_budget.contains_key(&budget.name) {
            self.by_budget.insert(budget.name.clone(), FxHashMap::default());
        }
        let periods = self.by_budget.get_mut(&budget.name).expect("inserted above");
        if !periods.contains_key(&window.id) {
            periods.insert(window.id.clone(), PeriodState { resets_at: window.resets_at, ..Default::default() });
        }
        periods.get_mut(&window.id).expect("inserted above")
    }

    fn get(&mut self, budget: &BudgetSpec, window: &Window) -> Option<&mut PeriodState> {
        self.by_budget.get_mut(&budget.name)?.get_mut(&window.id)
    }

    /// Forget periods that ended more than a day before `now_unix` (the callers' clock, which
    /// also picks the periods) and hold no reservations.
    fn forget_ended(&mut self, now_unix: f64) {
        if now_unix < self.forget_after {
            return;
        }
        let mut next = f64::INFINITY;
        self.by_budget.retain(|_, periods| {
            periods.retain(|_, s| {
                let keep = s.resets_at + 86_400.0 > now_unix || !s.held.is_empty();
                if keep {
                    next = next.min(s.resets_at + 86_400.0);
                }
                keep
            });
            !periods.is_empty()
        });
        self.forget_after = next;
    }
}

pub(crate) struct LocalLedger {
    periods: Mutex<Periods>,
    /// Day → joined labels → nano-dollars.
    spend: Mutex<BTreeMap<String, FxHashMap<String, i64>>>,
    next_id: AtomicU64,
}

impl LocalLedger {
    pub fn new() -> Self {
        LocalLedger {
            periods: Mutex::new(Periods { forget_after: f64::INFINITY, ..Default::default() }),
            spend: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Hold `nanos` on every budget's window, or on none.
    pub fn reserve(
        &self,
        budgets: &[InWindow],
        nanos: i64,
        expires: Instant,
        now: Instant,
        now_unix: f64,
    ) -> Result<Vec<HeldPart>> {
        let mut periods = self.periods.lock().unwrap_or_else(|p| p.into_inner());
        let mut parts: Vec<HeldPart> = Vec::with_capacity(budgets.len());
        for (budget, window) in budgets {
            let state = periods.state(budget, window, now_unix);
            state.purge(now);
            if state.spent + state.reserved + nanos > budget.limit_nanos {
                let holds = state.spent + state.reserved;
                for part in &parts {
                    if let Some(s) = periods.get(&part.budget, &part.window) {
                        s.end(&part.hold);
                    }
                }
                return Err(exceeded(budget, window, holds, nanos));
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            state.held.insert((expires, id), nanos);
            state.reserved += nanos;
            parts.push(HeldPart {
                budget: Arc::clone(budget),
                window: Arc::clone(window),
                hold: Hold::Local { expires, id },
            });
        }
        Ok(parts)
    }

    /// End the reservation's holds and add `nanos` to each budget's spending; the alerts
    /// crossed for the first time.
    pub fn settle(&self, parts: &[HeldPart], nanos: i64, now: Instant, made_at: f64) -> Vec<Alert> {
        let mut periods = self.periods.lock().unwrap_or_else(|p| p.into_inner());
        let mut alerts = Vec::new();
        for part in parts {
            let state = periods.state(&part.budget, &part.window, made_at);
            state.end(&part.hold);
            state.purge(now);
            if nanos == 0 {
                continue;
            }
            state.spent += nanos;
            for (percent, at) in part.budget.alert_amounts() {
                if state.spent >= at && state.fire(percent) {
                    alerts.push(Alert::new(&part.budget, &part.window, percent, state.spent));
                }
            }
        }
        alerts
    }

    /// `(spent, reserved)` of one period, in nano-dollars.
    pub fn totals(&self, budget: &BudgetSpec, window: &Window, now: Instant) -> (i64, i64) {
        let mut periods = self.periods.lock().unwrap_or_else(|p| p.into_inner());
        match periods.get(budget, window) {
            Some(state) => {
                state.purge(now);
                (state.spent, state.reserved)
            }
            None => (0, 0),
        }
    }

    /// Add to one day's spend records; days older than `SPEND_DAYS_KEPT` before it are
    /// forgotten.
    pub fn record(&self, day: &str, oldest_kept: &str, labels: &str, nanos: i64) {
        let mut spend = self.spend.lock().unwrap_or_else(|p| p.into_inner());
        if !spend.contains_key(day) {
            spend.retain(|d, _| d.as_str() >= oldest_kept);
            spend.insert(day.to_owned(), FxHashMap::default());
        }
        let records = spend.get_mut(day).expect("inserted above");
        *records.entry(labels.to_owned()).or_default() += nanos;
    }

    /// One day's spend records: (joined labels, nano-dollars).
    pub fn records(&self, day: &str) -> Vec<(String, i64)> {
        let spend = self.spend.lock().unwrap_or_else(|p| p.into_inner());
        spend.get(day).map(|r| r.iter().map(|(l, n)| (l.clone(), *n)).collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Period;
    use std::time::Duration;

    const NOW: f64 = 1_774_785_600.0;

    #[test]
    fn a_reservation_lapses_after_its_lease() {
        let ledger = LocalLedger::new();
        let b = Arc::new(BudgetSpec::new("lapsing", 1.0, Period::Day, "UTC", &[]).unwrap());
        let pair = [(Arc::clone(&b), b.window(NOW).unwrap())];
        let t0 = Instant::now();
        let lease = Duration::from_secs(30);
        let parts = ledger.reserve(&pair, 800_000_000, t0 + lease, t0, NOW).unwrap();
        assert_eq!(ledger.totals(&b, &pair[0].1, t0 + lease / 2), (0, 800_000_000));
        assert!(ledger.reserve(&pair, 300_000_000, t0 + lease, t0 + lease / 2, NOW).is_err());
        // Past its lease (the pod that held it is gone) it gives its amount back.
        let later = t0 + lease + Duration::from_millis(1);
        assert_eq!(ledger.totals(&b, &pair[0].1, later), (0, 0));
        ledger.reserve(&pair, 300_000_000, later + lease, later, NOW).unwrap();
        // Settling the lapsed reservation still counts what it spent, and frees nothing twice.
        ledger.settle(&parts, 100_000_000, later, NOW);
        assert_eq!(ledger.totals(&b, &pair[0].1, later), (100_000_000, 300_000_000));
    }

    #[test]
    fn ended_periods_are_forgotten() {
        let ledger = LocalLedger::new();
        let b = Arc::new(BudgetSpec::new("old", 1.0, Period::Day, "UTC", &[]).unwrap());
        let t0 = Instant::now();
        let old = [(Arc::clone(&b), b.window(NOW).unwrap())];
        let parts = ledger.reserve(&old, 1, t0 + Duration::from_secs(1), t0, NOW).unwrap();
        ledger.settle(&parts, 5, t0, NOW);
        let later = NOW + 3.0 * 86_400.0;
        let new = [(Arc::clone(&b), b.window(later).unwrap())];
        ledger.reserve(&new, 1, t0 + Duration::from_secs(1), t0, later).unwrap();
        let periods = ledger.periods.lock().unwrap();
        let kept: Vec<&String> = periods.by_budget["old"].keys().collect();
        assert_eq!(kept, vec![&new[0].1.id]);
    }
}
