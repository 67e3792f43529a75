//! The one Redis handle of a pod: standalone or cluster, one multiplexed connection that
//! concurrent callers share (their commands pipelined), a few blocking connections for
//! callers deciding on their own thread, and the Lua scripts run by SHA.

use crate::error::{Error, Result};
use crate::store::scripts::LuaScript;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, RedisError, ServerErrorKind, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::OnceCell;

/// How a store URL names its Redis.
#[derive(Debug, Clone, PartialEq)]
pub enum Topology {
    Standalone(String),
    Cluster(Vec<String>),
}

/// Parse `redis://…`, `rediss://…` (TLS) or `redis+cluster://host:port,host:port`
/// (`rediss+cluster://` for TLS; credentials before the first host apply to all nodes).
pub fn parse_url(url: &str) -> Result<Topology> {
    let bad = |reason: &str| Error::InvalidUrl { url: redact(url), reason: reason.to_owned() };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("expected a scheme such as redis://"))?;
    match scheme {
        "redis" | "rediss" => {
            let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(bad("no host"));
            }
            redis::Client::open(url).map_err(|e| bad(&e.to_string()))?;
            Ok(Topology::Standalone(url.to_owned()))
        }
        "redis+cluster" | "rediss+cluster" => {
            let node_scheme = if scheme == "rediss+cluster" { "rediss" } else { "redis" };
            let (userinfo, hosts) = match rest.rsplit_once('@') {
                Some((user, hosts)) => (format!("{user}@"), hosts),
                None => (String::new(), rest),
            };
            let hosts = hosts.split(['/', '?']).next().unwrap_or_default();
            let nodes: Vec<String> = hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| format!("{node_scheme}://{userinfo}{h}"))
                .collect();
            if nodes.is_empty() {
                return Err(bad("a cluster URL needs at least one host:port"));
            }
            for node in &nodes {
                let parsed = url::Url::parse(node).map_err(|e| bad(&e.to_string()))?;
                if parsed.port().is_none() {
                    return Err(bad("every cluster node needs an explicit port"));
                }
            }
            Ok(Topology::Cluster(nodes))
        }
        other => Err(bad(&format!("unknown scheme {other:?}: use redis://, rediss:// or redis+cluster://"))),
    }
}

/// A token naming this process among the pods sharing a Redis (for claims and records).
pub(crate) fn new_pod_token() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{:x}-{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

/// A URL with its password replaced, fit for errors and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[derive(Clone)]
enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Timeouts for the shared store.
#[derive(Debug, Clone, Copy)]
pub struct RedisTimeouts {
    pub connect: Duration,
    pub response: Duration,
}

pub struct RedisStore {
    topology: Topology,
    timeouts: RedisTimeouts,
    connection: OnceCell<Connection>,
    /// Idle blocking connections (standalone only), for callers deciding on their own
    /// thread: one round trip with no hand-off to the runtime's threads and back.
    blocking: Mutex<Vec<redis::Connection>>,
    /// Blocking connections open (idle or in use), at most `MAX_BLOCKING`.
    blocking_open: AtomicUsize,
}

/// Blocking connections kept at most: a few callers at a time get the lowest latency; the
/// rest share the multiplexed connection, which pipelines many callers' scripts.
const MAX_BLOCKING: usize = 4;

impl RedisStore {
    /// Validate the URL; the connection is made on first use (so a pod can start while
    /// Redis is down and run on its failure policy).
    pub fn new(url: &str, timeouts: RedisTimeouts) -> Result<Self> {
        Ok(RedisStore {
            topology: parse_url(url)?,
            timeouts,
            connection: OnceCell::new(),
            blocking: Mutex::default(),
            blocking_open: AtomicUsize::new(0),
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.topology, Topology::Cluster(_))
    }

    async fn connection(&self) -> Result<Connection> {
        let conn = self
            .connection
            .get_or_try_init(|| async {
                let t = self.timeouts;
                match &self.topology {
                    Topology::Standalone(url) => {
                        let client = redis::Client::open(url.as_str()).map_err(unavailable)?;
                        let config = ConnectionManagerConfig::new()
                            .set_connection_timeout(Some(t.connect))
                            .set_response_timeout(Some(t.response))
                            .set_number_of_retries(1);
                        let manager =
                            tokio::time::timeout(t.connect * 2, ConnectionManager::new_with_config(client, config))
                                .await
                                .map_err(|_| Error::StoreUnavailable("timed out connecting".into()))?
                                .map_err(unavailable)?;
                        Ok(Connection::Standalone(manager))
                    }
                    Topology::Cluster(nodes) => {
                        let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                            .connection_timeout(t.connect)
                            .response_timeout(t.response)
                            .retries(2)
                            .min_retry_wait(10)
                            .max_retry_wait(200)
                            .build()
                            .map_err(unavailable)?;
                        let conn = tokio::time::timeout(t.connect * 2, client.get_async_connection())
                            .await
                            .map_err(|_| Error::StoreUnavailable("timed out connecting to the cluster".into()))?
                            .map_err(unavailable)?;
                        Ok(Connection::Cluster(conn))
                    }
                }
            })
            .await?;
        Ok(conn.clone())
    }

    /// EVALSHA; on NOSCRIPT (a restarted or failed-over node has an empty script cache)
    /// EVAL the source, which runs it on that same node and caches it there.
    pub(crate) async fn run(&self, script: &LuaScript, keys: &[String], args: &[String]) -> Result<Value> {
        let mut conn = self.connection().await?;
        let call = |verb: &str, body: &str| {
            let mut cmd = Cmd::new();
            cmd.arg(verb).arg(body).arg(keys.len()).arg(keys).arg(args);
            cmd
        };
        let deadline = self.timeouts.response * 4;
        let attempt = async {
            match query(&mut conn, &call("EVALSHA", &script.sha)).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    query(&mut conn, &call("EVAL", script.source)).await
                }
                other => other,
            }
        };
        match tokio::time::timeout(deadline, attempt).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Error::StoreUnavailable(format!("{} script: {e}", script.name))),
            Err(_) => Err(Error::StoreUnavailable(format!("{} script: no answer within {deadline:?}", script.name))),
        }
    }

    /// An idle blocking connection, or a new one while fewer than `MAX_BLOCKING` are open;
    /// None when all are busy.
    fn blocking_connection(&self, url: &str) -> Option<Result<redis::Connection>> {
        if let Some(conn) = self.blocking.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Some(Ok(conn));
        }
        let opened = self
            .blocking_open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| (open < MAX_BLOCKING).then_some(open + 1));
        opened.ok()?;
        Some(self.connect_blocking(url).inspect_err(|_| {
            self.blocking_open.fetch_sub(1, Ordering::AcqRel);
        }))
    }

    /// `run` on the caller's thread, blocking, on a standalone Redis: one round trip with
    /// no hand-off to the runtime's threads and back. None on a cluster (a script's keys
    /// must be routed to their node) and while every blocking connection is busy.
    pub(crate) fn run_blocking(&self, script: &LuaScript, keys: &[String], args: &[String]) -> Option<Result<Value>> {
        let Topology::Standalone(url) = &self.topology else { return None };
        let conn = self.blocking_connection(url)?;
        Some(self.run_on(conn, script, keys, args))
    }

    /// `run` on a blocking connection, given back to the pool after; a connection that
    /// failed is dropped, not reused.
    fn run_on(
        &self,
        conn: Result<redis::Connection>,
        script: &LuaScript,
        keys: &[String],
        args: &[String],
    ) -> Result<Value> {
        use redis::ConnectionLike as _;
        let mut conn = conn?;
        let call = |verb: &str, body: &str| {
            let mut cmd = Cmd::new();
            cmd.arg(verb).arg(body).arg(keys.len()).arg(keys).arg(args);
            cmd
        };
        let reply = match conn.req_command(&call("EVALSHA", &script.sha)).and_then(Value::extract_error) {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                conn.req_command(&call("EVAL", script.source)).and_then(Value::extract_error)
            }
            other => other,
        };
        match reply {
            Ok(value) => {
                self.blocking.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
                Ok(value)
            }
            Err(e) => {
                self.blocking_open.fetch_sub(1, Ordering::AcqRel);
                Err(Error::StoreUnavailable(format!("{} script: {e}", script.name)))
            }
        }
    }

    fn connect_blocking(&self, url: &str) -> Result<redis::Connection> {
        let t = self.timeouts;
        let client = redis::Client::open(url).map_err(unavailable)?;
        let conn = client.get_connection_with_timeout(t.connect).map_err(unavailable)?;
        conn.set_read_timeout(Some(t.response * 4)).map_err(unavailable)?;
        conn.set_write_timeout(Some(t.response * 4)).map_err(unavailable)?;
        Ok(conn)
    }

    /// One plain command, with the store's timeout; errors as `StoreUnavailable`.
    pub(crate) async fn command(&self, cmd: &Cmd) -> Result<Value> {
        let mut conn = self.connection().await?;
        match tokio::time::timeout(self.timeouts.response * 4, query(&mut conn, cmd)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(Error::StoreUnavailable(format!("no answer within {:?}", self.timeouts.response * 4))),
        }
    }

    /// A round trip to the node of a quota, for health checks.
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.connection().await?;
        let ping = redis::cmd("PING");
        match tokio::time::timeout(self.timeouts.response * 4, query(&mut conn, &ping)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(Error::StoreUnavailable("PING: no answer".into())),
        }
    }
}

/// One command; a server error reply (NOSCRIPT, a script error) comes back as `Err`.
async fn query(conn: &mut Connection, cmd: &Cmd) -> redis::RedisResult<Value> {
    let reply = match conn {
        Connection::Standalone(c) => c.req_packed_command(cmd).await,
        Connection::Cluster(c) => c.req_packed_command(cmd).await,
    };
    reply?.extract_error()
}

fn unavailable(e: RedisError) -> Error {
    Error::StoreUnavailable(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_store_urls() {
        assert_eq!(
            parse_url("redis://127.0.0.1:6379/0").unwrap(),
            Topology::Standalone("redis://127.0.0.1:6379/0".into())
        );
        assert!(matches!(parse_url("rediss://:pw@example:6380").unwrap(), Topology::Standalone(_)));
        assert_eq!(
            parse_url("redis+cluster://:secret@10.0.0.1:7000,10.0.0.2:7001").unwrap(),
            Topology::Cluster(vec!["redis://:secret@10.0.0.1:7000".into(), "redis://:secret@10.0.0.2:7001".into()])
        );
        for bad in ["localhost:6379", "http://x:1", "redis+cluster://", "redis+cluster://a,b", "redis://"] {
            assert!(parse_url(bad).is_err(), "{bad} should be rejected");
        }
        let err = parse_url("http://user:hunter2@x:1").unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
