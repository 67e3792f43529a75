//! The shared ledger: budgets in Redis, over the pod's one Redis handle. Each budget's period
//! is two keys under the budget's own hash tag (`lua/budget-reserve-2.lua`); budgets on
//! different slots are reserved in turn, and those already reserved are given back when a
//! later one refuses. Reservations lapse on Redis server time.

use super::holds::{exceeded, key_ttl, Alert, HeldPart, Hold, InWindow, SPEND_DAYS_KEPT};
use crate::budget::{BudgetSpec, Window};
use crate::error::{Error, Result};
use crate::store::keys;
use crate::store::scripts::{BUDGET_RESERVE, BUDGET_SETTLE, SPEND_ADD};
use crate::store::{new_pod_token, RedisStore};
use redis::{Cmd, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub(crate) struct RedisLedger {
    store: Arc<RedisStore>,
    /// Names this process's reservations, so that ids never collide across pods.
    token: String,
    sequence: AtomicU64,
}

enum Reserved {
    Held,
    /// Refused: what the period held (spent + reserved).
    Refused {
        holds: i64,
    },
}

impl RedisLedger {
    pub fn new(store: Arc<RedisStore>) -> Self {
        RedisLedger { store, token: new_pod_token(), sequence: AtomicU64::new(0) }
    }

    fn store(&self) -> &RedisStore {
        &self.store
    }

    /// Hold `nanos` on every budget's window in turn; on a refusal or an error, give back
    /// what is already held.
    pub async fn reserve(
        &self,
        budgets: &[InWindow],
        nanos: i64,
        lease: Duration,
        now_unix: f64,
    ) -> Result<Vec<HeldPart>> {
        let mut parts: Vec<HeldPart> = Vec::with_capacity(budgets.len());
        for (budget, window) in budgets {
            let id = format!("{}:{:x}", self.token, self.sequence.fetch_add(1, Ordering::Relaxed));
            let args = [
                nanos.to_string(),
                budget.limit_nanos.to_string(),
                lease.as_millis().max(1).to_string(),
                id.clone(),
                key_ttl(window, now_unix, lease).to_string(),
            ];
            let outcome = self.store().run(&BUDGET_RESERVE, &period_keys(budget, window), &args).await;
            match outcome.and_then(parse_reserve) {
                Ok(Reserved::Held) => parts.push(HeldPart {
                    budget: Arc::clone(budget),
                    window: Arc::clone(window),
                    hold: Hold::Redis { member: format!("{id}|{nanos}") },
                }),
                Ok(Reserved::Refused { holds }) => {
                    self.settle(&parts, 0, now_unix).await?;
                    return Err(exceeded(budget, window, holds, nanos));
                }
                Err(e) => {
                    // Give back what earlier budgets hold; if that fails too, those holds
                    // lapse after their lease. The original error is what matters.
                    let _ = self.settle(&parts, 0, now_unix).await;
                    return Err(e);
                }
            }
        }
        Ok(parts)
    }

    /// End each part's hold and add `nanos` to its period; the alerts crossed for the
    /// first time across the fleet.
    pub async fn settle(&self, parts: &[HeldPart], nanos: i64, made_at: f64) -> Result<Vec<Alert>> {
        let mut alerts = Vec::new();
        for part in parts {
            let Hold::Redis { member } = &part.hold else {
                return Err(Error::invalid("this budget reservation was not made in Redis"));
            };
            let mut args =
                vec![member.clone(), nanos.to_string(), key_ttl(&part.window, made_at, Duration::ZERO).to_string()];
            if nanos > 0 {
                for (percent, at) in part.budget.alert_amounts() {
                    args.extend([percent.to_string(), at.to_string()]);
                }
            }
            let reply = self.store().run(&BUDGET_SETTLE, &period_keys(&part.budget, &part.window), &args).await?;
            let (spent, _, fired) = parse_settle(reply)?;
            for percent in fired {
                alerts.push(Alert::new(&part.budget, &part.window, percent, spent));
            }
        }
        Ok(alerts)
    }

    /// `(spent, reserved)` of one period, in nano-dollars (lapsed reservations given back).
    pub async fn totals(&self, budget: &BudgetSpec, window: &Window) -> Result<(i64, i64)> {
        let args = [String::new(), "0".to_owned(), "0".to_owned()];
        let reply = self.store().run(&BUDGET_SETTLE, &period_keys(budget, window), &args).await?;
        let (spent, reserved, _) = parse_settle(reply)?;
        Ok((spent, reserved))
    }

    /// Add to one day's spend records.
    pub async fn record(&self, day: &str, labels: &str, nanos: i64) -> Result<()> {
        let args = [labels.to_owned(), nanos.to_string(), (SPEND_DAYS_KEPT * 86_400).to_string()];
        self.store().run(&SPEND_ADD, &[keys::spend(day)], &args).await?;
        Ok(())
    }

    /// One day's spend records: (joined labels, nano-dollars).
    pub async fn records(&self, day: &str) -> Result<Vec<(String, i64)>> {
        let key = keys::spend(day);
        let mut hgetall = Cmd::new();
        hgetall.arg("HGETALL").arg(&key);
        let reply = self.store().command(&hgetall).await?;
        let malformed = || {
            Error::StoreUnavailable(format!(
                "HGETALL {key}: an unexpected reply (is another fleetgate version sharing this Redis?)"
            ))
        };
        let items = match reply {
            Value::Array(items) => items,
            Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => return Err(malformed()),
        };
        items
            .chunks(2)
            .map(|pair| match pair {
                [Value::BulkString(labels), Value::BulkString(nanos)] => {
                    let nanos = std::str::from_utf8(nanos).ok().and_then(|n| n.parse().ok()).ok_or_else(malformed)?;
                    Ok((String::from_utf8_lossy(labels).into_owned(), nanos))
                }
                _ => Err(malformed()),
            })
            .collect()
    }
}

fn period_keys(budget: &BudgetSpec, window: &Window) -> [String; 2] {
    [keys::budget_totals(&budget.tag, &window.id), keys::budget_held(&budget.tag, &window.id)]
}

fn malformed(script: &str, reply: &Value) -> Error {
    Error::StoreUnavailable(format!(
        "{script} script: unexpected reply {:.200} (is another fleetgate version sharing this Redis?)",
        format!("{reply:?}")
    ))
}

fn ints(script: &str, reply: &Value) -> Result<Vec<i64>> {
    let Value::Array(items) = reply else { return Err(malformed(script, reply)) };
    items
        .iter()
        .map(|v| match v {
            Value::Int(i) => Ok(*i),
            _ => Err(malformed(script, reply)),
        })
        .collect()
}

fn parse_reserve(reply: Value) -> Result<Reserved> {
    match ints("budget-reserve", &reply)?.as_slice() {
        [1, _, _] => Ok(Reserved::Held),
        [0, spent, reserved] => Ok(Reserved::Refused { holds: spent + reserved }),
        _ => Err(malformed("budget-reserve", &reply)),
    }
}

/// `(spent, reserved, percents of the alerts fired)`.
fn parse_settle(reply: Value) -> Result<(i64, i64, Vec<u16>)> {
    let values = ints("budget-settle", &reply)?;
    match values.as_slice() {
        [spent, reserved, _held, fired @ ..] => {
            let fired = fired
                .iter()
                .map(|&p| u16::try_from(p).ok().filter(|p| (1..=100).contains(p)))
                .collect::<Option<Vec<u16>>>()
                .ok_or_else(|| malformed("budget-settle", &reply))?;
            Ok((*spent, *reserved, fired))
        }
        _ => Err(malformed("budget-settle", &reply)),
    }
}
