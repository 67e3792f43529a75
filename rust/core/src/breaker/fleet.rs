//! Circuit breakers shared by a fleet through Redis.
//!
//! 1. Each transition of a pod's own is written to one hash (`fg:{breakers}`: breaker
//!    name → record); every pod reads the whole hash on a short period (`poll`) and adopts
//!    what other pods decided: an open or isolated breaker anywhere is honoured everywhere
//!    within one period, and so is a close.
//! 2. A half-open round is probed by one pod for the fleet (`confirm_probe`): the first pod
//!    to ask holds the round's lease in Redis; the others refuse, sending no probes.
//! 3. The holder's verdict (closed, or open again) is written and the lease dropped in one
//!    step (`publish`), so the round cannot look free before its verdict is readable; a
//!    pod asking after that is handed the verdict instead of a round. A holder that dies
//!    mid-round leaves a lease that lapses after `probe_max_wait`.
//!
//! Half-open is not published: each pod reaches it when its own open period ends, and a
//! late half-open record must not overwrite the verdict of the round. With Redis
//! unreachable every pod decides alone.
//!
//! Record: `state|open-until (wall clock, ms; 0 if none)|trips|pod id|sequence`.

use crate::breaker::{Breaker, Permit, Refusal, Refused, State, Transition};
use crate::error::{Error, Result};
use crate::store::keys;
use crate::store::scripts::{BREAKER_PROBE, BREAKER_PUBLISH};
use crate::store::{new_pod_token, RedisStore};
use redis::{Cmd, Value};
use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub struct BreakerFleet {
    store: Arc<RedisStore>,
    pod: String,
    sequence: AtomicU64,
    breakers: Mutex<FxHashMap<String, Weak<Breaker>>>,
    /// The last record seen per breaker, so a record is applied once.
    seen: Mutex<FxHashMap<String, String>>,
    /// Breakers whose half-open round this pod holds.
    rounds: Mutex<FxHashSet<String>>,
}

/// What the fleet says to a pod asking to probe a half-open round.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ProbeRound {
    /// This pod holds the round.
    Held,
    /// Another pod holds it, for this long at most.
    HeldElsewhere(Duration),
    /// The fleet decided since this pod last looked: its record.
    Decided(String),
}

impl BreakerFleet {
    /// Records and rounds go through the pod's one Redis handle.
    pub fn new(store: Arc<RedisStore>) -> Self {
        BreakerFleet {
            store,
            pod: new_pod_token(),
            sequence: AtomicU64::new(0),
            breakers: Mutex::new(FxHashMap::default()),
            seen: Mutex::new(FxHashMap::default()),
            rounds: Mutex::new(FxHashSet::default()),
        }
    }

    /// This pod's id in the fleet's records.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// Follow the fleet's records for this breaker.
    pub fn register(&self, breaker: &Arc<Breaker>) {
        lock(&self.breakers).insert(breaker.name().to_owned(), Arc::downgrade(breaker));
    }

    /// Write this pod's transition for the fleet, ending the half-open round it held.
    /// Remote transitions are not echoed, and half-open is not published (see above).
    pub async fn publish(&self, name: &str, transition: &Transition) -> Result<()> {
        let held = transition.from == State::HalfOpen && lock(&self.rounds).remove(name);
        let record = if transition.remote || transition.to == State::HalfOpen {
            if !held {
                return Ok(());
            }
            String::new() // the fleet decided for us: only give the round back
        } else {
            let until = transition.lasts.map_or(0, |l| wall_ms() + l.as_millis() as u64);
            let seq = self.sequence.fetch_add(1, Ordering::Relaxed);
            let record = format!("{}|{until}|{}|{}|{seq}", transition.to.as_str(), transition.trips, self.pod);
            lock(&self.seen).insert(name.to_owned(), record.clone());
            record
        };
        let keys = [keys::BREAKERS.to_owned(), keys::breaker_prober(name)];
        let args = [name.to_owned(), record, self.pod.clone()];
        self.store().run(&BREAKER_PUBLISH, &keys, &args).await?;
        Ok(())
    }

    /// Read every breaker's record and adopt other pods' decisions; returns how many
    /// records were applied.
    pub async fn poll(&self) -> Result<usize> {
        let mut hgetall = Cmd::new();
        hgetall.arg("HGETALL").arg(keys::BREAKERS);
        let reply = self.store().command(&hgetall).await?;
        let Value::Array(items) = reply else {
            return Err(Error::StoreUnavailable(format!("HGETALL {}: unexpected reply {reply:?}", keys::BREAKERS)));
        };
        let mut applied = 0;
        for pair in items.chunks(2) {
            let [Value::BulkString(name), Value::BulkString(record)] = pair else { continue };
            let (name, record) = (String::from_utf8_lossy(name), String::from_utf8_lossy(record));
            let Some(breaker) = self.breaker(&name) else { continue };
            applied += self.apply(&breaker, &record) as usize;
        }
        Ok(applied)
    }

    /// A probe `breaker` granted this pod goes only if this pod holds the fleet's round.
    /// Returns the permit to use: the probe, or, when the fleet decided the round since this
    /// pod last looked, whatever the breaker grants after adopting that verdict (an ordinary
    /// call once closed). Redis unreachable: this pod probes alone, as without a fleet.
    pub async fn confirm_probe(&self, breaker: &Breaker, mut permit: Permit) -> std::result::Result<Permit, Refused> {
        let lease = breaker.options().probe_max_wait;
        // A record adopted here can leave the breaker half-open (a stale open period); the
        // next ask knows that record, so it gets a round or a holder. Records that keep
        // changing under us: refuse rather than probe without the round.
        for _ in 0..3 {
            if permit.probe == 0 {
                return Ok(permit);
            }
            match self.claim_probe_round(breaker.name(), lease).await {
                Ok(ProbeRound::Held) | Err(_) => return Ok(permit),
                Ok(ProbeRound::HeldElsewhere(left)) => {
                    breaker.return_permit(permit);
                    return Err(Refused { reason: Refusal::ProbesOut, retry_after: Some(left) });
                }
                Ok(ProbeRound::Decided(record)) => {
                    breaker.return_permit(permit);
                    self.apply(breaker, &record);
                    permit = breaker.allow(Instant::now())?;
                }
            }
        }
        if permit.probe == 0 {
            return Ok(permit);
        }
        breaker.return_permit(permit);
        Err(Refused { reason: Refusal::ProbesOut, retry_after: Some(Duration::from_millis(100)) })
    }

    async fn claim_probe_round(&self, name: &str, lease: Duration) -> Result<ProbeRound> {
        let keys = [keys::breaker_prober(name), keys::BREAKERS.to_owned()];
        let known = lock(&self.seen).get(name).cloned().unwrap_or_default();
        let args = [self.pod.clone(), lease.as_millis().max(1).to_string(), name.to_owned(), known];
        let reply = self.store().run(&BREAKER_PROBE, &keys, &args).await?;
        let round = match reply {
            Value::Array(items) => match items.as_slice() {
                [Value::Int(1)] => Some(ProbeRound::Held),
                [Value::Int(0), Value::Int(left)] => {
                    Some(ProbeRound::HeldElsewhere(Duration::from_millis((*left).max(1) as u64)))
                }
                [Value::Int(2), Value::BulkString(record)] => {
                    Some(ProbeRound::Decided(String::from_utf8_lossy(record).into_owned()))
                }
                _ => None,
            },
            _ => None,
        };
        let round = round.ok_or_else(|| Error::StoreUnavailable("breaker-probe script: unexpected reply".into()))?;
        if round == ProbeRound::Held {
            lock(&self.rounds).insert(name.to_owned());
        }
        Ok(round)
    }

    /// Adopt one record of the fleet's hash, once; whether it was applied.
    fn apply(&self, breaker: &Breaker, record: &str) -> bool {
        {
            let mut seen = lock(&self.seen);
            if seen.get(breaker.name()).is_some_and(|r| r == record) {
                return false;
            }
            seen.insert(breaker.name().to_owned(), record.to_owned());
        }
        let Some((state, until_ms, trips, pod)) = parse_record(record) else { return false };
        if pod == self.pod {
            return false;
        }
        let lasts = (until_ms > 0).then(|| Duration::from_millis(until_ms.saturating_sub(wall_ms())));
        breaker.apply_remote(state, lasts, trips, Instant::now());
        true
    }

    fn breaker(&self, name: &str) -> Option<Arc<Breaker>> {
        let mut breakers = lock(&self.breakers);
        let found = breakers.get(name).map(Weak::upgrade);
        match found {
            Some(Some(b)) => Some(b),
            Some(None) => {
                breakers.remove(name);
                None
            }
            None => None,
        }
    }

    fn store(&self) -> &RedisStore {
        &self.store
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn parse_record(record: &str) -> Option<(State, u64, u32, &str)> {
    let mut fields = record.split('|');
    let state = State::parse(fields.next()?)?;
    let until = fields.next()?.parse().ok()?;
    let trips = fields.next()?.parse().ok()?;
    let pod = fields.next()?;
    Some((state, until, trips, pod))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        assert_eq!(parse_record("open|1700000000000|2|ab-cd|7"), Some((State::Open, 1_700_000_000_000, 2, "ab-cd")));
        assert_eq!(parse_record("nonsense|1|2|x|0"), None);
        assert_eq!(parse_record("open|x"), None);
    }
}
