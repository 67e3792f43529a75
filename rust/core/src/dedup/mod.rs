//! In-flight request deduplication: identical requests in flight (same endpoint, same
//! canonical JSON body, same scope namespace) share one upstream call.
//!
//! The first request of a key becomes the *leader* of a [`Flight`]: it makes the upstream
//! call and publishes into the flight its head (status and headers), its body chunks
//! (streams included) and its end (complete, failed or cancelled). Identical requests that
//! arrive while the flight is in its [`Flights`] table become *followers*: they read the
//! same head, every chunk from the first and the same end. Every request, leader included,
//! is one *waiter*; a waiter that is done, times out or is cancelled leaves, and the last one
//! to leave an unfinished flight is told so, so that the upstream call is cancelled only when
//! nobody waits any more.
//!
//! A flight leaves its table when it finishes or when its last waiter leaves, whichever comes
//! first, so a later identical request starts a fresh call instead of joining a finished or
//! doomed one. Chunks are kept for the life of the flight (a late joiner sees them all) and
//! shared, not copied, between waiters.
//!
//! A request's [`FlightKey`] hashes its endpoint, its namespace and its body in canonical
//! form (serde_json's compact output, object keys sorted), so clients that order keys or
//! space their JSON differently still share.
//!
//! Threads wait on a condition variable, tasks on a `Notify`; both are woken on every
//! publish. The table's lock is always taken before a flight's.

use crate::error::{Error, Result};
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use xxhash_rust::xxh3::xxh3_128;

pub mod fleet;

/// A 128-bit key of a request: xxh3_128 over endpoint, 0u8, namespace, 0u8, canonical body.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct FlightKey(pub u128);

impl FlightKey {
    /// The key of a request to `endpoint` (e.g. `/v1/chat/completions`) in the scope
    /// `namespace` (whatever must not be shared across, e.g. the API key or tenant).
    ///
    /// The body is canonicalized: parsed with serde_json and re-serialized compactly with
    /// object keys sorted, so key order and whitespace do not matter but every value does
    /// (array order included). Numbers compare as serde_json reads them, i.e. as the same
    /// `f64` beyond 64-bit integers, as most upstream parsers would. A body that is not JSON
    /// is an `InvalidArgument` error.
    ///
    /// A strict single pass writes that canonical form straight from the bytes, with no parse
    /// tree, into buffers the thread keeps; whatever it does not handle (anything that is not
    /// plain valid JSON, escaped or repeated object keys, deep nesting) goes through
    /// `serde_json::Value`, whose output both paths match byte for byte.
    pub fn new(endpoint: &str, namespace: &str, body: &[u8]) -> Result<FlightKey> {
        SCRATCH.with_borrow_mut(|scratch| {
            let Scratch { out, tmp, members } = scratch;
            out.clear();
            out.extend_from_slice(endpoint.as_bytes());
            out.push(0);
            out.extend_from_slice(namespace.as_bytes());
            out.push(0);
            let prefix = out.len();
            if canonical_fast(body, out, tmp, members).is_none() {
                out.truncate(prefix);
                canonical_value(body, out)?;
            }
            let key = FlightKey(xxh3_128(out));
            scratch.trim();
            Ok(key)
        })
    }

    /// 32 lowercase hex digits, for logs and Redis keys.
    pub fn hex(&self) -> String {
        format!("{:032x}", self.0)
    }
}

/// Buffers `FlightKey::new` reuses, so that a key costs no allocation in the steady state.
#[derive(Default)]
struct Scratch {
    out: Vec<u8>,
    tmp: Vec<u8>,
    members: Vec<Member>,
}

/// Scratch grown past this many bytes by a huge body is given back, not kept by the thread.
const SCRATCH_KEEP: usize = 64 * 1024;

impl Scratch {
    fn trim(&mut self) {
        if self.out.capacity() > SCRATCH_KEEP || self.tmp.capacity() > SCRATCH_KEEP {
            *self = Scratch::default();
        }
    }
}

thread_local!(static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default()));

/// Append the canonical form of `body` to `out` through `serde_json::Value`: the reference,
/// and the error message when the body is not JSON.
fn canonical_value(body: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        Error::invalid(format!(
            "cannot deduplicate a request whose body is not JSON ({e}); send a JSON body, \
             or turn deduplication off for this request"
        ))
    })?;
    write_value(out, &value).map_err(|e| {
        Error::invalid(format!("cannot canonicalize the request body ({e}); turn deduplication off for this request"))
    })
}

/// Write `value` as compact JSON with object keys in byte order: serde_json's own output
/// when its maps are sorted (the default), and the same when its `preserve_order` feature
/// is turned on by some other crate of the build.
fn write_value(out: &mut Vec<u8>, value: &serde_json::Value) -> serde_json::Result<()> {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            out.push(b'{');
            if map.keys().is_sorted() {
                write_members(out, map.iter())?;
            } else {
                let mut members: Vec<_> = map.iter().collect();
                members.sort_unstable_by(|a, b| a.0.cmp(b.0));
                write_members(out, members.into_iter())?;
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item)?;
            }
            out.push(b']');
        }
        leaf => serde_json::to_writer(&mut *out, leaf)?,
    }
    Ok(())
}

fn write_members<'a>(
    out: &mut Vec<u8>,
    members: impl Iterator<Item = (&'a String, &'a serde_json::Value)>,
) -> serde_json::Result<()> {
    for (i, (key, value)) in members.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, key)?;
        out.push(b':');
        write_value(out, value)?;
    }
    Ok(())
}

/// Append to `out` exactly what `canonical_value` would, or give `None` (leaving `out` to
/// be truncated) when unsure: `Some` only for input serde_json accepts.
fn canonical_fast(body: &[u8], out: &mut Vec<u8>, tmp: &mut Vec<u8>, members: &mut Vec<Member>) -> Option<()> {
    // Valid JSON is valid UTF-8 throughout (strings must be, the rest is ASCII): checking it
    // once here spares a check per string.
    std::str::from_utf8(body).ok()?;
    members.clear();
    let mut canon = Canonicalizer { input: body, pos: 0, out, tmp, members };
    canon.value(0)?;
    canon.skip_whitespace();
    (canon.pos == body.len()).then_some(())
}

/// The index of the first of eight bytes (little-endian) that ends or escapes a string or
/// is a control character (`"`, `\\`, below 0x20), if any: the fast path crosses string
/// content eight bytes at a time.
#[inline]
fn first_special_byte(word: u64) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of a byte of `below(x, n)` (n ≤ 128) is set for the lowest byte of `x`
    // below n, and for none under it: a borrow only runs upward from such a byte.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let equal = |x: u64, b: u8| below(x ^ (ONES * u64::from(b)), 1);
    let found = below(word, 0x20) | equal(word, b'"') | equal(word, b'\\');
    (found != 0).then(|| found.trailing_zeros() as usize / 8)
}

/// Nesting the fast path follows; deeper bodies take the `Value` path (limited to 128).
const FAST_DEPTH: usize = 64;

/// An object member already written to the output.
struct Member {
    /// The key's bytes in the input, between the quotes (never escaped).
    key: Range<usize>,
    /// `"key":value` in the output.
    out: Range<usize>,
}

/// The fast path: a strict JSON reader writing canonical JSON as it goes. Leaves whose
/// canonical form is not their text (escaped strings, numbers other than plain 64-bit
/// integers) are read and written by serde_json itself; object members are written in input
/// order and, when that is not key order, moved into it once the object closes.
struct Canonicalizer<'a> {
    input: &'a [u8],
    pos: usize,
    out: &'a mut Vec<u8>,
    /// A copy of an object's members while they are put in order.
    tmp: &'a mut Vec<u8>,
    /// The members of the objects being read, innermost last.
    members: &'a mut Vec<Member>,
}

impl Canonicalizer<'_> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    #[inline]
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.input.get(self.pos) {
            self.pos += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        self.skip_whitespace();
        match self.peek()? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string_value(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.input[self.pos..].starts_with(word).then_some(())?;
        self.pos += word.len();
        self.out.extend_from_slice(word);
        Some(())
    }

    /// Step over the string at `pos`: its content's range, and whether it has escapes.
    fn string(&mut self) -> Option<(Range<usize>, bool)> {
        let input = self.input;
        let start = self.pos + 1;
        let (mut at, mut escaped) = (start, false);
        loop {
            while let Some(&word) = input.get(at..).and_then(|rest| rest.first_chunk::<8>()) {
                if let Some(special) = first_special_byte(u64::from_le_bytes(word)) {
                    at += special;
                    break;
                }
                at += 8;
            }
            match *input.get(at)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    at += 2;
                }
                0..=0x1F => return None,
                _ => at += 1,
            }
        }
        self.pos = at + 1;
        Some((start..at, escaped))
    }

    fn string_value(&mut self) -> Option<()> {
        let (content, escaped) = self.string()?;
        if escaped {
            let text: String = serde_json::from_slice(&self.input[content.start - 1..=content.end]).ok()?;
            serde_json::to_writer(&mut *self.out, &text).ok()?;
        } else {
            // Unescaped, it holds nothing serde_json escapes (quotes, backslashes, controls).
            self.out.extend_from_slice(&self.input[content.start - 1..=content.end]);
        }
        Some(())
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.input.get(self.pos) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Option<()> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        self.pos += usize::from(negative);
        let digits = match self.peek()? {
            b'0' => {
                self.pos += 1;
                1
            }
            b'1'..=b'9' => self.digits(),
            _ => return None,
        };
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            integer = false;
            (self.digits() > 0).then_some(())?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            integer = false;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            (self.digits() > 0).then_some(())?;
        }
        let text = &self.input[start..self.pos];
        // serde_json keeps integers that fit 64 bits as they are written, except -0 (a float).
        let verbatim = integer && if negative { digits <= 18 && text != b"-0" } else { digits <= 19 };
        if verbatim {
            self.out.extend_from_slice(text);
        } else {
            let number: serde_json::Number = serde_json::from_slice(text).ok()?;
            serde_json::to_writer(&mut *self.out, &number).ok()?;
        }
        Some(())
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        (depth <= FAST_DEPTH).then_some(())?;
        self.pos += 1;
        self.out.push(b'[');
        self.skip_whitespace();
        if self.peek()? == b']' {
            self.pos += 1;
            self.out.push(b']');
            return Some(());
        }
        loop {
            self.value(depth)?;
            self.skip_whitespace();
            let next = self.peek()?;
            self.pos += 1;
            self.out.push(next);
            match next {
                b',' => {}
                b']' => return Some(()),
                _ => return None,
            }
        }
    }

    fn object(&mut self, depth: usize) -> Option<()> {
        (depth <= FAST_DEPTH).then_some(())?;
        self.pos += 1;
        self.out.push(b'{');
        let body = self.out.len();
        let first = self.members.len();
        self.skip_whitespace();
        if self.peek()? == b'}' {
            self.pos += 1;
            self.out.push(b'}');
            return Some(());
        }
        loop {
            self.skip_whitespace();
            (self.peek()? == b'"').then_some(())?;
            let (key, escaped) = self.string()?;
            // Ordering by an escaped key would need it decoded: rare, left to the Value path.
            (!escaped).then_some(())?;
            self.skip_whitespace();
            (self.peek()? == b':').then_some(())?;
            self.pos += 1;
            let start = self.out.len();
            self.out.extend_from_slice(&self.input[key.start - 1..=key.end]);
            self.out.push(b':');
            self.value(depth)?;
            self.members.push(Member { key, out: start..self.out.len() });
            self.skip_whitespace();
            match self.peek()? {
                b',' => self.out.push(b','),
                b'}' => break,
                _ => return None,
            }
            self.pos += 1;
        }
        self.pos += 1;
        self.order_members(first, body)?;
        self.out.push(b'}');
        Some(())
    }

    /// Put the members from `first` on, written from `body` on, in key order. Repeated keys
    /// give `None`: serde_json keeps the last, which the Value path does.
    fn order_members(&mut self, first: usize, body: usize) -> Option<()> {
        let input = self.input;
        let key = |member: &Member| &input[member.key.clone()];
        let members = &mut self.members[first..];
        if !members.windows(2).all(|pair| key(&pair[0]) < key(&pair[1])) {
            members.sort_unstable_by(|a, b| key(a).cmp(key(b)));
            members.windows(2).all(|pair| key(&pair[0]) != key(&pair[1])).then_some(())?;
            self.tmp.clear();
            self.tmp.extend_from_slice(&self.out[body..]);
            self.out.truncate(body);
            for (i, member) in members.iter().enumerate() {
                if i > 0 {
                    self.out.push(b',');
                }
                self.out.extend_from_slice(&self.tmp[member.out.start - body..member.out.end - body]);
            }
        }
        self.members.truncate(first);
        Some(())
    }
}

/// The flights in progress, by key. Share it as it is (`&Flights`, or inside an `Arc`); a
/// flight keeps only a weak reference back to it.
pub struct Flights {
    table: Arc<Table>,
}

/// The map behind `Flights`, reachable weakly from each flight so it can remove itself.
struct Table {
    flights: Mutex<FxHashMap<FlightKey, Arc<Flight>>>,
}

impl Table {
    fn lock(&self) -> MutexGuard<'_, FxHashMap<FlightKey, Arc<Flight>>> {
        // The map holds no invariant a panicking holder could break half-way.
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What `Flights::join` gives: the flight, and the caller's role in it.
#[derive(Debug)]
pub enum Joined {
    /// First of its key: make the upstream call and publish into the flight.
    Leader(Arc<Flight>),
    /// A flight of the same key is on: wait for what its leader publishes.
    Follower(Arc<Flight>),
}

impl Joined {
    pub fn flight(&self) -> &Arc<Flight> {
        match self {
            Joined::Leader(flight) | Joined::Follower(flight) => flight,
        }
    }

    pub fn is_leader(&self) -> bool {
        matches!(self, Joined::Leader(_))
    }
}

impl Flights {
    pub fn new() -> Self {
        Flights { table: Arc::new(Table { flights: Mutex::new(FxHashMap::default()) }) }
    }

    /// Join the flight of `key`: the first caller becomes the Leader (it must make the
    /// upstream call and publish into the flight, and finish it whatever happens, or its
    /// followers wait until their own timeouts); later callers while it is in the table are
    /// Followers. Either way the caller counts as one waiter and must `leave` once.
    pub fn join(&self, key: FlightKey) -> Joined {
        let mut flights = self.table.lock();
        match flights.entry(key) {
            Entry::Occupied(entry) => {
                // A flight in the table is unfinished and has a waiter: `finish` and the last
                // `leave` take it out under this lock.
                let flight = Arc::clone(entry.get());
                flight.lock().waiters += 1;
                Joined::Follower(flight)
            }
            Entry::Vacant(entry) => {
                let flight = Arc::new(Flight::new(key, Arc::downgrade(&self.table)));
                entry.insert(Arc::clone(&flight));
                Joined::Leader(flight)
            }
        }
    }

    /// Flights in the table: started, not finished, with someone waiting.
    pub fn in_flight(&self) -> usize {
        self.table.lock().len()
    }
}

impl Default for Flights {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Flights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flights").field("in_flight", &self.in_flight()).finish()
    }
}

/// The response head, as upstream sent it.
#[derive(Clone, Debug, PartialEq)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

/// How a flight ended.
#[derive(Clone, Debug, PartialEq)]
pub enum End {
    /// The whole response was published.
    Complete,
    /// The upstream call failed; `kind` names the error class (for the binding to re-raise),
    /// `message` says what happened.
    Failed { kind: String, message: String },
    /// The call was given up, normally because nobody waited any more.
    Cancelled,
}

/// A body chunk. Published once as an `Arc<[u8]>` and shared by every waiter: handing it out
/// costs a reference count, not a copy.
pub type Chunk = Arc<[u8]>;

/// What `Flight::next_chunk` gives.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    /// The chunk at the index asked for.
    Chunk(Chunk),
    /// No chunk at that index, ever: the flight ended.
    End(End),
    /// Nothing yet, and the timeout passed (blocking waits only).
    TimedOut,
}

/// What `Flight::wait_head` gives.
#[derive(Clone, Debug, PartialEq)]
pub enum HeadOrEnd {
    /// The head; the body follows through `next_chunk`.
    Head(Head),
    /// The flight ended without a head (typically `Failed` or `Cancelled`).
    End(End),
    /// No head yet, and the timeout passed (blocking waits only).
    TimedOut,
}

/// One upstream call shared by every identical request in flight.
pub struct Flight {
    key: FlightKey,
    table: Weak<Table>,
    state: Mutex<State>,
    /// Wakes threads blocked in `wait_head` / `next_chunk` (paired with `state`).
    changed: Condvar,
    /// Wakes tasks in `wait_head_async` / `next_chunk_async`.
    notify: Notify,
}

struct State {
    head: Option<Head>,
    chunks: Vec<Chunk>,
    end: Option<End>,
    waiters: usize,
    /// Threads blocked on `changed`: a publish skips the wake-up call when there are none.
    sleepers: usize,
}

impl State {
    fn head_or_end(&self) -> Option<HeadOrEnd> {
        if let Some(head) = &self.head {
            Some(HeadOrEnd::Head(head.clone()))
        } else {
            self.end.as_ref().map(|end| HeadOrEnd::End(end.clone()))
        }
    }

    fn next(&self, index: usize) -> Option<Next> {
        if let Some(chunk) = self.chunks.get(index) {
            Some(Next::Chunk(Arc::clone(chunk)))
        } else {
            self.end.as_ref().map(|end| Next::End(end.clone()))
        }
    }
}

impl fmt::Debug for Flight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("Flight")
            .field("key", &self.key.hex())
            .field("head", &st.head.is_some())
            .field("chunks", &st.chunks.len())
            .field("end", &st.end)
            .field("waiters", &st.waiters)
            .finish()
    }
}

impl Flight {
    fn new(key: FlightKey, table: Weak<Table>) -> Self {
        Flight {
            key,
            table,
            state: Mutex::new(State { head: None, chunks: Vec::new(), end: None, waiters: 1, sleepers: 0 }),
            changed: Condvar::new(),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a single push or assignment: a panicking holder leaves it whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn key(&self) -> FlightKey {
        self.key
    }

    /// Publish the response head. Once: a second call is ignored, and so is a call after
    /// `finish`.
    pub fn publish_head(&self, head: Head) {
        let mut st = self.lock();
        if st.head.is_some() || st.end.is_some() {
            return;
        }
        st.head = Some(head);
        let sleepers = st.sleepers > 0;
        drop(st);
        self.wake(sleepers);
    }

    /// Append a body chunk; every waiter, late joiners included, sees every chunk from the
    /// first. Ignored after `finish`.
    pub fn publish_chunk(&self, chunk: &[u8]) {
        let chunk: Chunk = Arc::from(chunk);
        let mut st = self.lock();
        if st.end.is_some() {
            return;
        }
        st.chunks.push(chunk);
        let sleepers = st.sleepers > 0;
        drop(st);
        self.wake(sleepers);
    }

    /// End the flight and wake everyone. Once: the first end stands (a `Complete` racing a
    /// `Cancelled` keeps whichever came first). The flight leaves its table, so later
    /// identical requests start a new flight; a newer flight of the same key is left alone.
    pub fn finish(&self, end: End) {
        let table = self.table.upgrade();
        // Table first, then flight (the lock order of `join`): no join can find the flight
        // finished but still in the table.
        let mut flights = table.as_ref().map(|table| table.lock());
        let mut st = self.lock();
        if st.end.is_some() {
            return;
        }
        st.end = Some(end);
        let sleepers = st.sleepers > 0;
        drop(st);
        if let Some(flights) = flights.as_mut() {
            self.remove_from(flights);
        }
        drop(flights);
        self.wake(sleepers);
    }

    /// Wait for the head, or for the end when the flight ends without one. `None` waits
    /// without limit. Blocks the calling thread: release any interpreter lock first.
    pub fn wait_head(&self, timeout: Option<Duration>) -> HeadOrEnd {
        self.wait_blocking(timeout, State::head_or_end, || HeadOrEnd::TimedOut)
    }

    /// `wait_head` for tasks; never `TimedOut` (wrap it in `tokio::time::timeout`).
    /// Cancel-safe: dropping the future leaves nothing behind.
    pub async fn wait_head_async(&self) -> HeadOrEnd {
        self.wait_async(State::head_or_end).await
    }

    /// Wait for the chunk at `index` (each waiter counts its own, from 0), or for the end
    /// when there will be no such chunk. Blocks the calling thread: release any interpreter
    /// lock first.
    pub fn next_chunk(&self, index: usize, timeout: Option<Duration>) -> Next {
        self.wait_blocking(timeout, |st| st.next(index), || Next::TimedOut)
    }

    /// `next_chunk` for tasks; never `TimedOut` (wrap it in `tokio::time::timeout`).
    /// Cancel-safe: dropping the future leaves nothing behind.
    pub async fn next_chunk_async(&self, index: usize) -> Next {
        self.wait_async(|st| st.next(index)).await
    }

    /// Every chunk published from index `from` on, and the end if the flight has ended (then
    /// those chunks are the last). Never waits: lets a waiter drain all there is in one call.
    pub fn chunks_so_far(&self, from: usize) -> (Vec<Chunk>, Option<End>) {
        let st = self.lock();
        let chunks = st.chunks.get(from..).map_or_else(Vec::new, <[Chunk]>::to_vec);
        (chunks, st.end.clone())
    }

    /// A waiter leaves (done, timed out or cancelled). Returns true when it was the last
    /// waiter and the flight is not finished: the flight has left its table (a new identical
    /// request starts afresh) and the leader should cancel the upstream call, then
    /// `finish(End::Cancelled)`. At most one `leave` of a flight returns true. Leaving more
    /// often than joining is the caller's bug; the count stops at zero.
    pub fn leave(&self) -> bool {
        {
            let mut st = self.lock();
            if st.waiters == 0 {
                return false;
            }
            if st.waiters > 1 || st.end.is_some() {
                st.waiters -= 1;
                return false;
            }
        }
        // Perhaps the last waiter of an unfinished flight: decide under the table's lock too,
        // so that no join slips in between the count reaching zero and the flight going.
        let table = self.table.upgrade();
        let mut flights = table.as_ref().map(|table| table.lock());
        let mut st = self.lock();
        if st.waiters == 0 {
            return false;
        }
        st.waiters -= 1;
        if st.waiters > 0 || st.end.is_some() {
            return false;
        }
        drop(st);
        if let Some(flights) = flights.as_mut() {
            self.remove_from(flights);
        }
        true
    }

    /// Waiters that joined and have not left, leader included.
    pub fn waiters(&self) -> usize {
        self.lock().waiters
    }

    pub fn is_finished(&self) -> bool {
        self.lock().end.is_some()
    }

    /// Take this flight (not a newer one of the same key) out of its table.
    fn remove_from(&self, flights: &mut FxHashMap<FlightKey, Arc<Flight>>) {
        if flights.get(&self.key).is_some_and(|f| std::ptr::eq(Arc::as_ptr(f), self)) {
            flights.remove(&self.key);
        }
    }

    /// Wake the tasks, and the threads if any are blocked.
    fn wake(&self, sleepers: bool) {
        if sleepers {
            self.changed.notify_all();
        }
        self.notify.notify_waiters();
    }

    fn wait_blocking<T>(
        &self,
        timeout: Option<Duration>,
        ready: impl Fn(&State) -> Option<T>,
        timed_out: impl FnOnce() -> T,
    ) -> T {
        // A timeout too large for an `Instant` is no timeout.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut st = self.lock();
        loop {
            if let Some(found) = ready(&st) {
                return found;
            }
            let left = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
            if left.is_some_and(|left| left.is_zero()) {
                return timed_out();
            }
            st.sleepers += 1;
            st = match left {
                None => self.changed.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(left) => self.changed.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0,
            };
            st.sleepers -= 1;
        }
    }

    async fn wait_async<T>(&self, ready: impl Fn(&State) -> Option<T>) -> T {
        loop {
            // Register for the next `notify_waiters` before looking, so a publish between the
            // look and the await still wakes this task.
            let mut notified = std::pin::pin!(self.notify.notified());
            notified.as_mut().enable();
            let found = ready(&self.lock());
            if let Some(found) = found {
                return found;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Barrier;
    use std::thread;

    const CHAT: &str = "/v1/chat/completions";

    fn key(body: &str) -> FlightKey {
        FlightKey::new(CHAT, "tenant-a", body.as_bytes()).unwrap()
    }

    fn head() -> Head {
        Head { status: 200, headers: vec![("content-type".into(), "text/event-stream".into())] }
    }

    /// Read a flight to its end as a blocking waiter: (head, body, end).
    fn read_all(flight: &Flight) -> (HeadOrEnd, Vec<u8>, End) {
        let head = flight.wait_head(None);
        let mut body = Vec::new();
        let mut index = 0;
        loop {
            match flight.next_chunk(index, None) {
                Next::Chunk(chunk) => body.extend_from_slice(&chunk),
                Next::End(end) => return (head, body, end),
                Next::TimedOut => unreachable!("no timeout was given"),
            }
            index += 1;
        }
    }

    #[test]
    fn key_ignores_key_order_and_whitespace() {
        let a = key(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#);
        let b = key("{ \"temperature\" : 0.5,\n \"messages\": [ {\"content\": \"hi\", \"role\": \"user\"} ],\t\"model\": \"gpt-4o\" }\n");
        assert_eq!(a, b);
        // Escapes are read, not compared as written.
        assert_eq!(key(r#"{"content":"A\/"}"#), key(r#"{"content":"\u0041/"}"#));
    }

    #[test]
    fn key_differs_by_endpoint_namespace_and_every_value() {
        let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"n":1}"#;
        let base = FlightKey::new(CHAT, "tenant-a", body).unwrap();
        assert_ne!(base, FlightKey::new("/v1/completions", "tenant-a", body).unwrap());
        assert_ne!(base, FlightKey::new(CHAT, "tenant-b", body).unwrap());
        assert_ne!(base, FlightKey::new(CHAT, "", body).unwrap());
        for other in [
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"n":1}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi!"}],"n":1}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"system","content":"hi"}],"n":1}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"n":2}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"n":1.0}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"n":"1"}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"n":1,"seed":null}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"},{"role":"user","content":"hi"}],"n":1}"#,
        ] {
            assert_ne!(base, key(other), "{other}");
        }
        // Array order is meaningful.
        assert_ne!(key("[1,2]"), key("[2,1]"));
    }

    #[test]
    fn key_is_xxh3_128_of_endpoint_namespace_and_serde_json_canonical_body() {
        let small = r#"{"b":[true,false,null,-3,2.5e3,"x\n"],"a":{"z":1,"y":{}}}"#;
        let filler = "word ".repeat(2000);
        let large = format!(r#"{{"messages":[{{"content":"{filler}","role":"user"}}],"model":"m"}}"#);
        for body in [small, &large] {
            let canonical = serde_json::to_vec(&serde_json::from_str::<serde_json::Value>(body).unwrap()).unwrap();
            let mut reference = Vec::new();
            reference.extend_from_slice(b"/v1/x\0ns\0");
            reference.extend_from_slice(&canonical);
            assert_eq!(FlightKey::new("/v1/x", "ns", body.as_bytes()).unwrap(), FlightKey(xxh3_128(&reference)));
        }
    }

    /// The fast path's output, or `None` when it hands over to the `Value` path.
    fn fast(body: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        canonical_fast(body, &mut out, &mut Vec::new(), &mut Vec::new()).map(|()| out)
    }

    /// serde_json's own compact output of the parsed body: what both paths must write.
    fn reference(body: &[u8]) -> Option<Vec<u8>> {
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        Some(serde_json::to_vec(&value).unwrap())
    }

    fn through_value(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        canonical_value(body, &mut out).unwrap();
        out
    }

    #[test]
    fn the_fast_path_takes_ordinary_bodies_and_writes_what_serde_json_writes() {
        for body in [
            r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"Be brief.\nVery."},{"role":"user","content":"Caf\u00e9? \"Paris\" \\ ok"}],"temperature":0.2,"max_tokens":256,"stream":true,"user":"ü-123","stop":null}"#,
            r#" [ 0, -0, -1, 1.50, 1e2, 1E+2, -2.5e-3, 18446744073709551615, 18446744073709551616, -9223372036854775808, -9223372036854775809, 123456789012345678901234567890 ] "#,
            r#"{"z":{"b":[{"y":1,"x":2}],"a":{}},"a":[],"é":"","e":"\/"}"#,
            "\"just a string\"",
            "12",
            "\t\r\n true \n",
        ] {
            let fast = fast(body.as_bytes()).unwrap_or_else(|| panic!("the fast path gave up on {body}"));
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(reference(body.as_bytes()).unwrap()).unwrap()
            );
        }
    }

    #[test]
    fn the_fast_path_hands_over_what_it_does_not_handle_and_the_key_is_still_right() {
        // Repeated keys (serde_json keeps the last), escaped keys, deep nesting.
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        for body in [r#"{"a":1,"b":2,"a":3}"#, r#"{"b":1,"\u0061":2}"#, r#"{"\n":1,"A":2}"#, &deep] {
            assert_eq!(fast(body.as_bytes()), None, "{body}");
            assert_eq!(through_value(body.as_bytes()), reference(body.as_bytes()).unwrap(), "{body}");
        }
        assert_eq!(key(r#"{"a":1,"b":2,"a":3}"#), key(r#"{"b":2,"a":3}"#));
        assert_eq!(key(r#"{"b":1,"\u0061":2}"#), key(r#"{"a":2,"b":1}"#));
        // Too deep for serde_json too: an error, not a panic.
        let too_deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(FlightKey::new(CHAT, "", too_deep.as_bytes()).is_err());
    }

    #[test]
    fn the_fast_path_refuses_what_serde_json_refuses() {
        #[rustfmt::skip]
        let refused = [
            "", " ", "{", "}", "[1,]", "[,1]", "{\"a\":1,}", "{\"a\" 1}", "{a:1}", "{\"a\":1}}", "[1 2]", "01", "-", "1.",
            ".5", "1e", "1e+", "+1", "-01", "tru", "truee", "nul", "NaN", "Infinity", "\"a", "\"\\x\"", "\"\\u12\"",
            "\"\\ud800\"", "\"a\u{1}b\"", "'a'", "[1]x", "1e400", "\u{feff}{}",
        ];
        for body in refused {
            assert_eq!(reference(body.as_bytes()), None, "serde_json accepts {body:?}");
            assert_eq!(fast(body.as_bytes()), None, "{body:?}");
        }
        assert_eq!(fast(b"\"\xff\""), None);
    }

    #[test]
    fn first_special_byte_finds_the_first_quote_backslash_or_control() {
        let special = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
        for filler in [b'a', b' ', b'!', b'#', b'[', b']', 0x7F, 0x80, 0xC3, 0xFF] {
            for (first, second) in [(0, 7), (1, 6), (2, 5), (3, 4), (4, 3), (7, 0), (2, 3)] {
                for a in 0..=255u8 {
                    for b in 0..=255u8 {
                        let mut word = [filler; 8];
                        word[first] = a;
                        word[second] = b;
                        let expected = word.iter().position(|&byte| special(byte));
                        assert_eq!(first_special_byte(u64::from_le_bytes(word)), expected, "{word:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn hex_is_32_lowercase_digits() {
        assert_eq!(FlightKey(0xAB).hex(), format!("{}ab", "0".repeat(30)));
        let hex = key("{}").hex();
        assert_eq!(hex.len(), 32);
        assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    #[test]
    fn a_body_that_is_not_json_is_an_invalid_argument_saying_so() {
        for body in [&b"model=gpt-4o"[..], b"", b"{\"a\":1", b"{\"a\":1} trailing", b"\"\xff\""] {
            match FlightKey::new(CHAT, "ns", body) {
                Err(Error::InvalidArgument(msg)) => {
                    assert!(msg.contains("not JSON") && msg.contains("turn deduplication off"), "{msg}")
                }
                other => panic!("expected InvalidArgument for {body:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn first_join_leads_second_follows_and_after_finish_a_new_join_leads() {
        let flights = Flights::new();
        let k = key("{}");
        let leader = flights.join(k);
        assert!(leader.is_leader());
        let follower = flights.join(k);
        assert!(!follower.is_leader());
        assert!(Arc::ptr_eq(leader.flight(), follower.flight()));
        assert_eq!(leader.flight().waiters(), 2);
        assert_eq!(flights.in_flight(), 1);
        // Another key is another flight.
        assert!(flights.join(key("[]")).is_leader());
        assert_eq!(flights.in_flight(), 2);

        leader.flight().finish(End::Complete);
        assert!(follower.flight().is_finished());
        assert_eq!(flights.in_flight(), 1);
        let again = flights.join(k);
        assert!(again.is_leader());
        assert!(!Arc::ptr_eq(again.flight(), leader.flight()));
    }

    #[test]
    fn a_late_joiner_sees_every_chunk_from_the_first() {
        let flights = Flights::new();
        let Joined::Leader(flight) = flights.join(key("{}")) else { panic!("first join leads") };
        flight.publish_head(head());
        flight.publish_chunk(b"data: 1\n\n");
        flight.publish_chunk(b"data: 2\n\n");
        let Joined::Follower(late) = flights.join(key("{}")) else { panic!("second join follows") };
        assert_eq!(late.chunks_so_far(0).0.len(), 2);
        flight.publish_chunk(b"data: [DONE]\n\n");
        flight.finish(End::Complete);
        let (got_head, body, end) = read_all(&late);
        assert_eq!(got_head, HeadOrEnd::Head(head()));
        assert_eq!(body, b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n");
        assert_eq!(end, End::Complete);
    }

    #[test]
    fn chunks_so_far_drains_from_an_index_with_the_end_once_there() {
        let flights = Flights::new();
        let flight = Arc::clone(flights.join(key("{}")).flight());
        assert_eq!(flight.chunks_so_far(0), (vec![], None));
        flight.publish_chunk(b"a");
        flight.publish_chunk(b"b");
        let (chunks, end) = flight.chunks_so_far(1);
        assert_eq!((chunks.len(), &*chunks[0], end), (1, &b"b"[..], None));
        flight.finish(End::Complete);
        assert_eq!(flight.chunks_so_far(2), (vec![], Some(End::Complete)));
        assert_eq!(flight.chunks_so_far(99), (vec![], Some(End::Complete)));
    }

    #[test]
    fn second_head_second_end_and_publishing_after_the_end_are_ignored() {
        let flights = Flights::new();
        let flight = Arc::clone(flights.join(key("{}")).flight());
        flight.publish_head(head());
        flight.publish_head(Head { status: 500, headers: vec![] });
        flight.publish_chunk(b"x");
        flight.finish(End::Complete);
        flight.finish(End::Cancelled);
        flight.publish_chunk(b"y");
        assert_eq!(read_all(&flight), (HeadOrEnd::Head(head()), b"x".to_vec(), End::Complete));
    }

    #[test]
    fn a_thousand_threads_share_one_leader_and_identical_bytes() {
        const THREADS: usize = 1000;
        let flights = Arc::new(Flights::new());
        let all_joined = Arc::new(Barrier::new(THREADS));
        let k = key(r#"{"model":"gpt-4o","stream":true}"#);
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (flights, all_joined) = (Arc::clone(&flights), Arc::clone(&all_joined));
                thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        let joined = flights.join(k);
                        let leader = joined.is_leader();
                        let flight = Arc::clone(joined.flight());
                        if leader {
                            flight.publish_head(head());
                            flight.publish_chunk(b"early ");
                        }
                        all_joined.wait();
                        if leader {
                            for i in 0..50 {
                                flight.publish_chunk(format!("chunk {i} ").as_bytes());
                            }
                            flight.finish(End::Complete);
                        }
                        let read = read_all(&flight);
                        flight.leave();
                        (leader, read)
                    })
                    .unwrap()
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|(leader, _)| *leader).count(), 1);
        let expected: Vec<u8> =
            b"early ".iter().copied().chain((0..50).flat_map(|i| format!("chunk {i} ").into_bytes())).collect();
        for (_, read) in &results {
            assert_eq!(read, &(HeadOrEnd::Head(head()), expected.clone(), End::Complete));
        }
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn async_waiters_get_every_chunk_and_the_end() {
        const TASKS: usize = 64;
        let flights = Arc::new(Flights::new());
        let k = key(r#"{"stream":true}"#);
        let Joined::Leader(flight) = flights.join(k) else { panic!("first join leads") };
        let all_joined = Arc::new(tokio::sync::Barrier::new(TASKS + 1));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let (flights, all_joined) = (Arc::clone(&flights), Arc::clone(&all_joined));
                tokio::spawn(async move {
                    let Joined::Follower(flight) = flights.join(k) else { panic!("the leader is on") };
                    all_joined.wait().await;
                    let head = flight.wait_head_async().await;
                    let mut body = Vec::new();
                    let mut index = 0;
                    let end = loop {
                        match flight.next_chunk_async(index).await {
                            Next::Chunk(chunk) => body.extend_from_slice(&chunk),
                            Next::End(end) => break end,
                            Next::TimedOut => unreachable!("async waits never time out"),
                        }
                        index += 1;
                    };
                    let last = flight.leave();
                    (head, body, end, last)
                })
            })
            .collect();
        all_joined.wait().await;
        // Publish while the tasks wait, yielding so they are parked between publishes.
        flight.publish_head(head());
        for i in 0..20u8 {
            tokio::task::yield_now().await;
            flight.publish_chunk(&[i]);
        }
        flight.finish(End::Complete);
        for task in tasks {
            let (got_head, body, end, last) = task.await.unwrap();
            assert_eq!(got_head, HeadOrEnd::Head(head()));
            assert_eq!(body, (0..20u8).collect::<Vec<_>>());
            assert_eq!(end, End::Complete);
            assert!(!last, "a finished flight is never cancelled");
        }
        assert_eq!(flight.waiters(), 1);
        assert!(!flight.leave());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_async_timeout_leaves_the_flight_undisturbed() {
        let flights = Flights::new();
        let flight = Arc::clone(flights.join(key("{}")).flight());
        let follower = Arc::clone(flights.join(key("{}")).flight());
        let waited = tokio::time::timeout(Duration::from_millis(20), follower.wait_head_async()).await;
        assert!(waited.is_err());
        assert!(tokio::time::timeout(Duration::from_millis(20), follower.next_chunk_async(0)).await.is_err());
        assert!(!follower.leave());
        flight.publish_head(head());
        flight.finish(End::Complete);
        assert_eq!(flight.wait_head_async().await, HeadOrEnd::Head(head()));
        assert_eq!(flight.next_chunk_async(0).await, Next::End(End::Complete));
    }

    #[test]
    fn leave_is_true_only_for_the_last_waiter_of_an_unfinished_flight() {
        let flights = Flights::new();
        let k = key("{}");
        let flight = Arc::clone(flights.join(k).flight());
        flights.join(k);
        flights.join(k);
        assert_eq!(flight.waiters(), 3);
        assert!(!flight.leave());
        assert!(!flight.leave());
        assert_eq!(flights.in_flight(), 1);
        assert!(flight.leave(), "the last waiter of an unfinished flight");
        assert_eq!(flight.waiters(), 0);
        assert_eq!(flights.in_flight(), 0, "a doomed flight leaves the table at once");
        assert!(!flight.leave(), "leaving again saturates");
        assert_eq!(flight.waiters(), 0);

        // Finished first: nobody is told to cancel.
        let done = Arc::clone(flights.join(k).flight());
        flights.join(k);
        done.finish(End::Complete);
        assert!(!done.leave());
        assert!(!done.leave());
        assert!(!done.leave());
    }

    #[test]
    fn after_everyone_leaves_a_new_join_leads_and_the_old_finish_spares_it() {
        let flights = Flights::new();
        let k = key("{}");
        let old = Arc::clone(flights.join(k).flight());
        flights.join(k);
        assert!(!old.leave());
        assert!(old.leave());
        let new = flights.join(k);
        assert!(new.is_leader());
        // The old leader cancels its call: the newer flight of the same key stays.
        old.finish(End::Cancelled);
        assert_eq!(flights.in_flight(), 1);
        assert!(!flights.join(k).is_leader());
        assert!(!new.flight().is_finished());
        assert_eq!(old.wait_head(None), HeadOrEnd::End(End::Cancelled));
    }

    #[test]
    fn timeouts_return_timed_out_and_do_not_disturb_others() {
        let flights = Flights::new();
        let k = key("{}");
        let flight = Arc::clone(flights.join(k).flight());
        let follower = Arc::clone(flights.join(k).flight());
        let patient = {
            let flight = Arc::clone(&flight);
            thread::spawn(move || read_all(&flight))
        };
        assert_eq!(follower.wait_head(Some(Duration::from_millis(10))), HeadOrEnd::TimedOut);
        assert_eq!(follower.wait_head(Some(Duration::ZERO)), HeadOrEnd::TimedOut);
        assert_eq!(follower.next_chunk(0, Some(Duration::from_millis(10))), Next::TimedOut);
        assert!(!follower.leave());
        assert_eq!(flight.waiters(), 1);
        assert!(!flight.is_finished());

        flight.publish_head(head());
        assert_eq!(follower.next_chunk(0, Some(Duration::from_millis(10))), Next::TimedOut);
        flight.publish_chunk(b"ok");
        assert_eq!(follower.next_chunk(0, Some(Duration::ZERO)), Next::Chunk(Arc::from(&b"ok"[..])));
        flight.finish(End::Complete);
        assert_eq!(patient.join().unwrap(), (HeadOrEnd::Head(head()), b"ok".to_vec(), End::Complete));
        // A huge timeout is no timeout, not an overflow.
        assert_eq!(flight.next_chunk(1, Some(Duration::MAX)), Next::End(End::Complete));
    }

    #[test]
    fn a_failed_end_reaches_every_waiter() {
        let flights = Arc::new(Flights::new());
        let k = key("{}");
        let flight = Arc::clone(flights.join(k).flight());
        let failed = End::Failed { kind: "RateLimitError".into(), message: "429 from upstream".into() };
        let all_joined = Arc::new(Barrier::new(9));
        let waiters: Vec<_> = (0..8)
            .map(|i| {
                let (flights, all_joined) = (Arc::clone(&flights), Arc::clone(&all_joined));
                thread::spawn(move || {
                    let flight = Arc::clone(flights.join(k).flight());
                    all_joined.wait();
                    let got = if i % 2 == 0 {
                        flight.wait_head(None)
                    } else {
                        match flight.next_chunk(0, None) {
                            Next::End(end) => HeadOrEnd::End(end),
                            other => panic!("expected the end, got {other:?}"),
                        }
                    };
                    flight.leave();
                    got
                })
            })
            .collect();
        all_joined.wait();
        flight.finish(failed.clone());
        for waiter in waiters {
            assert_eq!(waiter.join().unwrap(), HeadOrEnd::End(failed.clone()));
        }
        assert_eq!(flight.chunks_so_far(0), (vec![], Some(failed)));
        assert!(!flight.leave());
        assert!(flights.join(k).is_leader());
    }

    /// A JSON value, as serde_json holds it.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let number = "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?"
            .prop_filter_map("in range", |text| serde_json::from_str::<Value>(&text).ok());
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            number,
            "\\PC{0,40}|[\\x00-\\x7f]{0,40}|[ -~]{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::vec(("[a-z]{0,3}|\\PC{0,4}|[\\x00-\\x7f]{0,3}", inner), 0..6)
                    .prop_map(|members| serde_json::Value::Object(members.into_iter().collect())),
            ]
        })
    }

    /// `value` written as a client might: members in any order, whitespace anywhere, some
    /// characters escaped. `choices` drives each of those decisions.
    fn write_loosely(value: &serde_json::Value, choices: &mut impl Iterator<Item = u8>, out: &mut String) {
        use serde_json::Value;
        space(choices, out);
        match value {
            Value::String(text) => write_string_loosely(text, choices, out),
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_loosely(item, choices, out);
                }
                space(choices, out);
                out.push(']');
            }
            Value::Object(map) => {
                let mut members: Vec<_> = map.iter().collect();
                let rotate = usize::from(pick(choices, 8)) % members.len().max(1);
                members.rotate_left(rotate);
                if pick(choices, 2) == 1 {
                    members.reverse();
                }
                out.push('{');
                for (i, (key, item)) in members.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    space(choices, out);
                    write_string_loosely(key, choices, out);
                    space(choices, out);
                    out.push(':');
                    write_loosely(item, choices, out);
                }
                space(choices, out);
                out.push('}');
            }
            leaf => out.push_str(&leaf.to_string()),
        }
        space(choices, out);
    }

    fn pick(choices: &mut impl Iterator<Item = u8>, n: u8) -> u8 {
        choices.next().unwrap_or(0) % n
    }

    fn space(choices: &mut impl Iterator<Item = u8>, out: &mut String) {
        out.push_str(["", "", " ", "\n  ", "\t", "\r\n"][usize::from(pick(choices, 6))]);
    }

    fn write_string_loosely(text: &str, choices: &mut impl Iterator<Item = u8>, out: &mut String) {
        let escape_all = pick(choices, 4) == 0;
        out.push('"');
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '/' if escape_all => out.push_str("\\/"),
                c if (c as u32) < 0x20 || (escape_all && c != ' ') => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04X}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn fast_path_and_value_path_match_serde_json(value in json_value(), choices in prop::collection::vec(any::<u8>(), 256)) {
            let mut body = String::new();
            write_loosely(&value, &mut choices.into_iter(), &mut body);
            // What serde_json reads back from the plain text (its float parsing need not
            // round-trip `value` exactly), whatever the formatting.
            let expected = reference(&serde_json::to_vec(&value).unwrap()).unwrap();
            prop_assert_eq!(reference(body.as_bytes()), Some(expected.clone()), "{}", body);
            prop_assert_eq!(through_value(body.as_bytes()), expected.clone());
            if let Some(fast) = fast(body.as_bytes()) {
                prop_assert_eq!(fast, expected.clone());
            }
            let mut prefixed = b"/v1/x\0ns\0".to_vec();
            prefixed.extend_from_slice(&expected);
            prop_assert_eq!(FlightKey::new("/v1/x", "ns", body.as_bytes()).unwrap(), FlightKey(xxh3_128(&prefixed)));
        }

        #[test]
        fn the_fast_path_never_accepts_what_serde_json_refuses(
            value in json_value(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), 0..3u8, prop::sample::select(&b"{}[]\",:\\-+.eE0123456789 \ntrufalsn\x01\x7f\xc3\xa9\xff"[..])), 1..4),
        ) {
            let mut body = serde_json::to_vec_pretty(&value).unwrap();
            for (at, how, byte) in edits {
                let at = at.index(body.len() + 1);
                match how {
                    0 => body.insert(at, byte),
                    1 if at < body.len() => { body.remove(at); }
                    _ if at < body.len() => body[at] = byte,
                    _ => body.push(byte),
                }
            }
            match (fast(&body), reference(&body)) {
                (Some(fast), Some(expected)) => prop_assert_eq!(fast, expected),
                (Some(fast), None) => prop_assert!(false, "the fast path accepted {:?} as {:?}", String::from_utf8_lossy(&body), String::from_utf8_lossy(&fast)),
                (None, _) => {}
            }
        }
    }

    #[test]
    fn a_flight_outliving_its_table_still_works() {
        let flights = Flights::new();
        let flight = Arc::clone(flights.join(key("{}")).flight());
        drop(flights);
        flight.publish_chunk(b"x");
        flight.finish(End::Complete);
        assert_eq!(flight.next_chunk(0, None), Next::Chunk(Arc::from(&b"x"[..])));
        assert!(!flight.leave());
    }
}
