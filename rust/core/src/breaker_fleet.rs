//! Circuit breakers shared by a fleet through Redis.
//!
//! Each transition is written to one hash (`fg:{breakers}`: breaker name → record), and
//! every pod reads the whole hash on a short period (`poll`), adopting what other pods
//! decided: an open or isolated breaker anywhere is honoured everywhere within one period.
//! A half-open round is probed by one pod only (`claim_probe_round`, a lease in Redis), so
//! a fleet of N pods sends `half_open_probes` probes, not N times as many. With Redis
//! unreachable every pod decides alone.
//!
//! Record: `state|open-until (wall clock, ms; 0 if none)|trips|pod id|sequence`.

use crate::breaker::{Breaker, State, Transition};
use crate::error::{Error, Result};
use crate::keys;
use crate::limiter::Limiter;
use crate::scripts::BREAKER_PROBE;
use redis::{Cmd, Value};
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub struct BreakerFleet {
    limiter: Arc<Limiter>,
    pod: String,
    sequence: AtomicU64,
    breakers: Mutex<FxHashMap<String, Weak<Breaker>>>,
    /// The last record seen per breaker, so a record is applied once.
    seen: Mutex<FxHashMap<String, String>>,
}

impl BreakerFleet {
    /// `limiter` must be shared (Redis); its connection carries the breakers too.
    pub fn new(limiter: Arc<Limiter>) -> Result<Self> {
        if limiter.shared_store().is_none() {
            return Err(Error::invalid("breakers are shared through Redis: give the limiter a redis:// URL"));
        }
        Ok(BreakerFleet {
            limiter,
            pod: crate::redis_store::new_pod_token(),
            sequence: AtomicU64::new(0),
            breakers: Mutex::new(FxHashMap::default()),
            seen: Mutex::new(FxHashMap::default()),
        })
    }

    /// This pod's id in the fleet's records.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// Follow the fleet's records for this breaker.
    pub fn register(&self, breaker: &Arc<Breaker>) {
        let mut breakers = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        breakers.insert(breaker.name().to_owned(), Arc::downgrade(breaker));
    }

    /// Write this pod's transition for the fleet (remote transitions are not echoed).
    pub async fn publish(&self, name: &str, transition: &Transition) -> Result<()> {
        if transition.remote {
            return Ok(());
        }
        let until = transition.lasts.map_or(0, |l| wall_ms() + l.as_millis() as u64);
        let seq = self.sequence.fetch_add(1, Ordering::Relaxed);
        let record = format!("{}|{until}|{}|{}|{seq}", transition.to.as_str(), transition.trips, self.pod);
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), record.clone());
        let store = self.store();
        let mut hset = Cmd::new();
        hset.arg("HSET").arg(keys::BREAKERS).arg(name).arg(&record);
        store.command(&hset).await?;
        if transition.from == State::HalfOpen {
            let mut del = Cmd::new();
            del.arg("DEL").arg(keys::breaker_prober(name));
            store.command(&del).await?;
        }
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
        let (now, now_ms) = (Instant::now(), wall_ms());
        let mut applied = 0;
        for pair in items.chunks(2) {
            let [Value::BulkString(name), Value::BulkString(record)] = pair else { continue };
            let (name, record) = (String::from_utf8_lossy(name), String::from_utf8_lossy(record));
            let Some(breaker) = self.breaker(&name) else { continue };
            {
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                if seen.get(name.as_ref()).is_some_and(|r| *r == record) {
                    continue;
                }
                seen.insert(name.to_string(), record.to_string());
            }
            let Some((state, until_ms, trips, pod)) = parse_record(&record) else { continue };
            if pod == self.pod {
                continue;
            }
            let lasts = (until_ms > 0).then(|| Duration::from_millis(until_ms.saturating_sub(now_ms)));
            breaker.apply_remote(state, lasts, trips, now);
            applied += 1;
        }
        Ok(applied)
    }

    /// Ask to probe this half-open round; false when another pod holds it.
    pub async fn claim_probe_round(&self, name: &str, lease: Duration) -> Result<bool> {
        let keys = [keys::breaker_prober(name)];
        let args = [self.pod.clone(), lease.as_millis().max(1).to_string()];
        let reply = self.store().run(&BREAKER_PROBE, &keys, &args).await?;
        Ok(matches!(reply, Value::Int(1)))
    }

    fn breaker(&self, name: &str) -> Option<Arc<Breaker>> {
        let mut breakers = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
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

    fn store(&self) -> &crate::redis_store::RedisStore {
        self.limiter.shared_store().expect("checked in new")
    }
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

    #[test]
    fn an_embedded_limiter_cannot_share_breakers() {
        let limiter = Arc::new(Limiter::new(None, Default::default()).unwrap());
        let err = BreakerFleet::new(limiter).err().unwrap().to_string();
        assert!(err.contains("redis://"), "{err}");
    }
}
