//! Deduplication across pods, through Redis: of the pods that hold the same request in
//! flight, the one that claims it makes the call and publishes the answer; the others wait
//! for that answer instead of calling upstream themselves.
//!
//! A claim is a key with the claiming pod's token and a lease (the caller's deadline), so a
//! pod that dies mid-call blocks nobody for longer than that: when its claim is gone with
//! no answer, a waiter claims and calls itself. Publishing the answer and dropping the
//! claim are one script, so a waiter never sees the claim gone before the answer is there.
//! Waiters poll (the answer key, then the claim) every `poll` interval.

use crate::error::{Error, Result};
use crate::store::keys;
use crate::store::scripts::{DEDUP_PUBLISH, DEDUP_RELEASE};
use crate::store::{new_pod_token, RedisStore};
use redis::{Cmd, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An answer shared between pods: status, headers (as the publisher encoded them) and body.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedAnswer {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

/// What a waiting pod ends with.
#[derive(Debug, Clone, PartialEq)]
pub enum Waited {
    Answer(SharedAnswer),
    /// The claim is gone and no answer was published: claim the call yourself.
    Unclaimed,
    TimedOut,
}

pub struct DedupFleet {
    store: Arc<RedisStore>,
    token: String,
}

impl DedupFleet {
    /// Claims and answers go through the pod's one Redis handle.
    pub fn new(store: Arc<RedisStore>) -> Self {
        DedupFleet { store, token: new_pod_token() }
    }

    fn store(&self) -> &RedisStore {
        &self.store
    }

    /// Claim the call of request `key` (hex) for `lease`; false when another pod holds it.
    pub async fn claim(&self, key: &str, lease: Duration) -> Result<bool> {
        let mut set = Cmd::new();
        set.arg("SET").arg(keys::dedup_claim(key)).arg(&self.token).arg("NX").arg("PX").arg(millis(lease));
        Ok(matches!(self.store().command(&set).await?, Value::Okay | Value::SimpleString(_)))
    }

    /// Publish the answer for the waiting pods (kept for `keep`) and drop the claim; false
    /// when the claim had already passed to another pod.
    pub async fn publish(&self, key: &str, answer: &SharedAnswer, keep: Duration) -> Result<bool> {
        let keys = [keys::dedup_claim(key), keys::dedup_answer(key)];
        let body = String::from_utf8(answer.body.clone())
            .map_err(|_| Error::invalid("only UTF-8 answers are shared across pods"))?;
        let args = [self.token.clone(), answer.status.to_string(), answer.headers.clone(), body, millis(keep)];
        Ok(matches!(self.store().run(&DEDUP_PUBLISH, &keys, &args).await?, Value::Int(1)))
    }

    /// Give the claim up without an answer: a waiting pod then makes the call.
    pub async fn release(&self, key: &str) -> Result<bool> {
        let reply =
            self.store().run(&DEDUP_RELEASE, &[keys::dedup_claim(key)], std::slice::from_ref(&self.token)).await?;
        Ok(matches!(reply, Value::Int(1)))
    }

    /// Wait (polling every `poll`) for the answer another pod publishes, for its claim to
    /// vanish without one, or for `timeout`.
    pub async fn wait(&self, key: &str, timeout: Duration, poll: Duration) -> Result<Waited> {
        let deadline = Instant::now() + timeout;
        let (claim, answer) = (keys::dedup_claim(key), keys::dedup_answer(key));
        loop {
            if let Some(found) = self.answer(&answer).await? {
                return Ok(Waited::Answer(found));
            }
            let mut exists = Cmd::new();
            exists.arg("EXISTS").arg(&claim);
            if matches!(self.store().command(&exists).await?, Value::Int(0)) {
                // Published between the two reads, or given up: look once more.
                return Ok(match self.answer(&answer).await? {
                    Some(found) => Waited::Answer(found),
                    None => Waited::Unclaimed,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Waited::TimedOut);
            }
            tokio::time::sleep(poll.min(deadline - now)).await;
        }
    }

    async fn answer(&self, key: &str) -> Result<Option<SharedAnswer>> {
        let mut hmget = Cmd::new();
        hmget.arg("HMGET").arg(key).arg("s").arg("h").arg("b");
        let reply = self.store().command(&hmget).await?;
        let Value::Array(fields) = reply else { return Ok(None) };
        let text = |v: &Value| match v {
            Value::BulkString(b) => Some(b.clone()),
            _ => None,
        };
        match (fields.first().and_then(text), fields.get(1).and_then(text), fields.get(2).and_then(text)) {
            (Some(status), Some(headers), Some(body)) => {
                let status = String::from_utf8_lossy(&status).parse().map_err(|_| {
                    Error::StoreUnavailable(format!("{key}: a malformed shared answer (another fleetgate version?)"))
                })?;
                Ok(Some(SharedAnswer { status, headers: String::from_utf8_lossy(&headers).into_owned(), body }))
            }
            _ => Ok(None),
        }
    }
}

fn millis(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}
