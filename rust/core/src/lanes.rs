//! Priority lanes: a per-model concurrency cap placed before a model's upstream calls, with
//! requests that find every slot taken queued in one of three lanes.
//!
//! `Realtime` is strict: while a realtime request waits, it gets the next slot that frees.
//! `Interactive` and `Batch` share what is left by smooth weighted round-robin (default
//! 4:1), so that when both are backlogged grants split exactly by weight, neither starves,
//! and a lane waiting alone gets every slot. A freed slot is handed straight to the waiter
//! chosen (no barging: a newcomer takes a free slot only when nobody is queued).
//!
//! A request may carry a deadline. A request whose deadline has passed is never given a
//! slot: it is told `LaneError::Expired`, at entry, when the scheduler reaches it, or by its
//! own timer while it waits — which fires whether or not any slot frees. Each lane's queue is
//! bounded; entering a full lane fails at once with `LaneError::QueueFull`.
//!
//! One mutex guards the whole scheduler; each waiter has its own condition variable (for
//! threads) and `Notify` (for tasks), so a grant wakes exactly the waiter it is for.

use crate::error::{Error, Result};
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::Notify;

/// A priority lane, numbered like the Python `Priority` enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Always served before the other lanes.
    Realtime,
    /// Shares with `Batch` by weight, the larger share by default.
    Interactive,
    /// Shares with `Interactive` by weight; never starved while it waits.
    Batch,
}

impl Lane {
    /// Every lane, in priority order (`ALL[lane.index()] == lane`).
    pub const ALL: [Lane; 3] = [Lane::Realtime, Lane::Interactive, Lane::Batch];

    /// The lane of a Python `Priority` value: 0 realtime, 1 interactive, 2 batch.
    pub fn from_index(i: i64) -> Option<Lane> {
        match i {
            0 => Some(Lane::Realtime),
            1 => Some(Lane::Interactive),
            2 => Some(Lane::Batch),
            _ => None,
        }
    }

    /// The inverse of `from_index`.
    pub fn index(self) -> usize {
        match self {
            Lane::Realtime => 0,
            Lane::Interactive => 1,
            Lane::Batch => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Realtime => "realtime",
            Lane::Interactive => "interactive",
            Lane::Batch => "batch",
        }
    }

    pub fn parse(text: &str) -> Option<Lane> {
        Lane::ALL.into_iter().find(|lane| lane.as_str() == text)
    }
}

/// The interactive lane's default share against batch.
pub const DEFAULT_INTERACTIVE_WEIGHT: u32 = 4;
/// The batch lane's default share against interactive.
pub const DEFAULT_BATCH_WEIGHT: u32 = 1;
/// The largest weight accepted (the round-robin credits must not overflow).
pub const MAX_WEIGHT: u32 = 1_000_000;

#[derive(Clone, Debug)]
pub struct LanesOptions {
    /// How many requests may hold a slot at once (at least 1).
    pub concurrency: usize,
    /// How many requests may wait in each lane. 0 turns queueing off: while every slot is
    /// taken, entering fails at once with `QueueFull`.
    pub queue_limit: usize,
    /// Interactive's share of the slots left by realtime, against `batch_weight` (at least 1).
    pub interactive_weight: u32,
    /// Batch's share of the slots left by realtime, against `interactive_weight` (at least 1).
    pub batch_weight: u32,
}

impl LanesOptions {
    /// Options with the default 4:1 interactive:batch weights.
    pub fn new(concurrency: usize, queue_limit: usize) -> Self {
        LanesOptions {
            concurrency,
            queue_limit,
            interactive_weight: DEFAULT_INTERACTIVE_WEIGHT,
            batch_weight: DEFAULT_BATCH_WEIGHT,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.concurrency == 0 {
            return Err(Error::invalid("concurrency must be at least 1: it is how many requests may run at once"));
        }
        for (name, weight) in [("interactive_weight", self.interactive_weight), ("batch_weight", self.batch_weight)] {
            if !(1..=MAX_WEIGHT).contains(&weight) {
                return Err(Error::invalid(format!("{name} must be between 1 and {MAX_WEIGHT}, got {weight}")));
            }
        }
        Ok(())
    }
}

/// Why a request got no slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaneError {
    /// Every slot is taken and the lane already holds `limit` waiting requests.
    #[error(
        "lane {:?} is full: every slot is busy and {limit} requests already wait in it (queue_limit); \
         raise queue_limit or concurrency, or shed load", lane.as_str()
    )]
    QueueFull { lane: Lane, limit: usize },

    /// The request's deadline passed before it got a slot; it was not started.
    #[error(
        "the request's deadline passed before a slot in lane {:?} came free, so it was not started; \
         give it a later deadline, raise concurrency, or shed load", lane.as_str()
    )]
    Expired { lane: Lane },

    /// `Lanes::close` was called: nothing is granted any more.
    #[error("the lanes are closed (shutting down) and grant no more slots; stop sending requests through them")]
    Closed,
}

/// What happened to the requests of one lane, counted since the lanes were made. Every
/// request that entered ends in exactly one of these (or in `LaneError::Closed`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneCounters {
    /// Given a slot (at entry, or by `Ticket::wait`).
    pub granted: u64,
    /// Told `Expired`: at entry, in the queue, or granted too late to start.
    pub expired: u64,
    /// Refused at entry with `QueueFull`.
    pub refused_full: u64,
    /// Their `Ticket` was dropped before it gave a slot (the caller gave up).
    pub cancelled: u64,
}

/// The counters of every lane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneStats {
    pub realtime: LaneCounters,
    pub interactive: LaneCounters,
    pub batch: LaneCounters,
}

impl LaneStats {
    pub fn lane(&self, lane: Lane) -> LaneCounters {
        match lane {
            Lane::Realtime => self.realtime,
            Lane::Interactive => self.interactive,
            Lane::Batch => self.batch,
        }
    }
}

/// Where a queued request stands. Changed only under the scheduler's mutex.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Outcome {
    /// In its lane's queue.
    Waiting = 0,
    /// Out of the queue, holding a slot that its `Ticket` has not yet turned into a `Slot`.
    Granted = 1,
    /// Out of the queue: its deadline passed.
    Expired = 2,
    /// Out of the queue: the lanes were closed.
    Closed = 3,
    /// Settled: its ticket gave a slot, or learned it expired; nothing is left to clean up.
    Done = 4,
}

/// One queued request, shared by its lane's queue and its `Ticket`.
struct Waiter {
    lane: Lane,
    deadline: Option<Instant>,
    outcome: AtomicU8,
    /// Wakes a thread in `Ticket::wait_blocking` (paired with the scheduler's mutex).
    ready: Condvar,
    /// Wakes a task in `Ticket::wait`.
    notify: Notify,
}

impl Waiter {
    fn outcome(&self) -> Outcome {
        match self.outcome.load(Ordering::Relaxed) {
            0 => Outcome::Waiting,
            1 => Outcome::Granted,
            2 => Outcome::Expired,
            3 => Outcome::Closed,
            _ => Outcome::Done,
        }
    }

    /// Only under the scheduler's mutex, which orders it against every reader.
    fn set(&self, outcome: Outcome) {
        self.outcome.store(outcome as u8, Ordering::Relaxed);
    }

    fn expired_at(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|deadline| now >= deadline)
    }

    fn wake(&self) {
        self.ready.notify_one();
        self.notify.notify_one();
    }
}

struct State {
    /// Slots held: by `Slot`s, and by granted tickets not yet waited on.
    in_use: usize,
    queues: [VecDeque<Arc<Waiter>>; 3],
    /// Smooth weighted round-robin credit of interactive and batch.
    credit: [i64; 2],
    counters: [LaneCounters; 3],
    closed: bool,
}

impl State {
    fn nobody_waits(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty)
    }

    /// Expire, from the front of `lane`'s queue, the waiters whose deadline has passed.
    fn expire_heads(&mut self, lane: Lane, now: Instant) {
        let queue = &mut self.queues[lane.index()];
        while queue.front().is_some_and(|w| w.expired_at(now)) {
            if let Some(waiter) = queue.pop_front() {
                waiter.set(Outcome::Expired);
                waiter.wake();
                self.counters[lane.index()].expired += 1;
            }
        }
    }

    /// Take `waiter` out of its lane's queue (it must be `Waiting`).
    fn unqueue(&mut self, waiter: &Arc<Waiter>) {
        let queue = &mut self.queues[waiter.lane.index()];
        if let Some(at) = queue.iter().position(|w| Arc::ptr_eq(w, waiter)) {
            queue.remove(at);
        }
    }
}

/// Priority lanes before one model's upstream calls. Share it as `Arc<Lanes>`.
pub struct Lanes {
    options: LanesOptions,
    state: Mutex<State>,
}

impl fmt::Debug for Lanes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("Lanes")
            .field("options", &self.options)
            .field("in_use", &st.in_use)
            .field("queued", &st.queues.each_ref().map(VecDeque::len))
            .field("closed", &st.closed)
            .finish()
    }
}

/// What `Lanes::enter` gives.
#[derive(Debug)]
pub enum Entry {
    /// A slot was free and nobody waited for it: go.
    Granted(Slot),
    /// Every slot is taken (or others wait first): wait on the ticket.
    Queued(Ticket),
}

impl Lanes {
    pub fn new(options: LanesOptions) -> Result<Lanes> {
        options.validate()?;
        Ok(Lanes {
            options,
            state: Mutex::new(State {
                in_use: 0,
                queues: Default::default(),
                credit: [0, 0],
                counters: Default::default(),
                closed: false,
            }),
        })
    }

    pub fn options(&self) -> &LanesOptions {
        &self.options
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take a slot now if one is free and nobody is queued (in any lane: a free slot with
    /// anyone queued never lasts past the release that freed it); otherwise queue in `lane`.
    /// A `deadline` already passed is refused with `Expired` even when a slot is free; a
    /// full lane refuses with `QueueFull`; closed lanes refuse with `Closed`.
    pub fn enter(self: &Arc<Self>, lane: Lane, deadline: Option<Instant>) -> std::result::Result<Entry, LaneError> {
        let mut st = self.lock();
        if st.closed {
            return Err(LaneError::Closed);
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            st.counters[lane.index()].expired += 1;
            return Err(LaneError::Expired { lane });
        }
        if st.in_use < self.options.concurrency && st.nobody_waits() {
            st.in_use += 1;
            st.counters[lane.index()].granted += 1;
            return Ok(Entry::Granted(Slot { lanes: Arc::clone(self), lane }));
        }
        if st.queues[lane.index()].len() >= self.options.queue_limit {
            st.counters[lane.index()].refused_full += 1;
            return Err(LaneError::QueueFull { lane, limit: self.options.queue_limit });
        }
        let waiter = Arc::new(Waiter {
            lane,
            deadline,
            outcome: AtomicU8::new(Outcome::Waiting as u8),
            ready: Condvar::new(),
            notify: Notify::new(),
        });
        st.queues[lane.index()].push_back(Arc::clone(&waiter));
        Ok(Entry::Queued(Ticket { lanes: Arc::clone(self), waiter }))
    }

    /// Slots taken: by `Slot`s, and by tickets granted a slot but not yet waited on.
    pub fn in_use(&self) -> usize {
        self.lock().in_use
    }

    /// Requests waiting in `lane`.
    pub fn queued(&self, lane: Lane) -> usize {
        self.lock().queues[lane.index()].len()
    }

    pub fn stats(&self) -> LaneStats {
        let [realtime, interactive, batch] = self.lock().counters;
        LaneStats { realtime, interactive, batch }
    }

    /// Stop granting: every waiter is woken with `Closed`, and so is every later `enter`.
    /// Slots already held stay held until dropped.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        for queue in &mut st.queues {
            for waiter in queue.drain(..) {
                waiter.set(Outcome::Closed);
                waiter.wake();
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Give a slot back and hand it (and any other free slot) to the next waiters.
    fn release(&self, st: &mut State) {
        st.in_use = st.in_use.saturating_sub(1);
        self.dispatch(st);
    }

    /// Hand free slots to waiters: expired queue heads are dropped (told `Expired`), then
    /// realtime first, then interactive and batch by weight.
    fn dispatch(&self, st: &mut State) {
        if st.nobody_waits() {
            return;
        }
        let now = Instant::now();
        for lane in Lane::ALL {
            st.expire_heads(lane, now);
        }
        while st.in_use < self.options.concurrency {
            let Some(lane) = self.next_lane(st) else { break };
            let Some(waiter) = st.queues[lane.index()].pop_front() else { break };
            st.in_use += 1;
            waiter.set(Outcome::Granted);
            waiter.wake();
            st.expire_heads(lane, now);
        }
    }

    /// The lane the next free slot goes to, or `None` when nobody waits. Realtime is
    /// strict; interactive and batch are picked by smooth weighted round-robin among the
    /// lanes that have waiters, which is deterministic and, while both wait, gives each
    /// exactly its weight's share of every `interactive_weight + batch_weight` grants.
    fn next_lane(&self, st: &mut State) -> Option<Lane> {
        if !st.queues[Lane::Realtime.index()].is_empty() {
            return Some(Lane::Realtime);
        }
        let interactive = !st.queues[Lane::Interactive.index()].is_empty();
        let batch = !st.queues[Lane::Batch.index()].is_empty();
        match (interactive, batch) {
            (false, false) => None,
            // Alone, a lane gets the slot and the credits stay as they are (+w, then -w).
            (true, false) => Some(Lane::Interactive),
            (false, true) => Some(Lane::Batch),
            (true, true) => {
                let (wi, wb) = (i64::from(self.options.interactive_weight), i64::from(self.options.batch_weight));
                st.credit[0] += wi;
                st.credit[1] += wb;
                if st.credit[0] >= st.credit[1] {
                    st.credit[0] -= wi + wb;
                    Some(Lane::Interactive)
                } else {
                    st.credit[1] -= wi + wb;
                    Some(Lane::Batch)
                }
            }
        }
    }
}

/// A held slot; dropping it (or calling `release`) hands the slot to the next waiter.
pub struct Slot {
    lanes: Arc<Lanes>,
    lane: Lane,
}

impl Slot {
    /// The lane this slot was granted in.
    pub fn lane(&self) -> Lane {
        self.lane
    }

    /// Give the slot back now (the same as dropping it).
    pub fn release(self) {}
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.lanes.lock();
        self.lanes.release(&mut st);
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot").field("lane", &self.lane).finish()
    }
}

/// A place in a lane's queue. A slot granted to it is held for it until it is waited on
/// (`wait`, `wait_blocking`, `try_wait`) or dropped; dropping it (cancellation) leaves the
/// queue, or hands a slot already granted to it on to the next waiter.
pub struct Ticket {
    lanes: Arc<Lanes>,
    waiter: Arc<Waiter>,
}

impl Ticket {
    /// The lane this ticket waits in.
    pub fn lane(&self) -> Lane {
        self.waiter.lane
    }

    /// The deadline it was entered with.
    pub fn deadline(&self) -> Option<Instant> {
        self.waiter.deadline
    }

    /// Wait for the slot. `Ok(Slot)` when granted; `Err(Expired)` when the deadline passes
    /// first — enforced here by a tokio timer (`timeout_at` on the deadline), so it fires at
    /// the deadline even while every slot stays busy; `Err(Closed)` when the lanes close.
    ///
    /// With a deadline this must be polled inside a tokio runtime with the time driver on;
    /// without one, any executor will do. Dropping the future cancels like dropping the
    /// ticket: no slot is ever leaked.
    pub async fn wait(self) -> std::result::Result<Slot, LaneError> {
        let deadline = self.waiter.deadline.map(tokio::time::Instant::from_std);
        loop {
            if let Some(done) = self.settle_now(false) {
                return done;
            }
            let notified = self.waiter.notify.notified();
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return self.settle_now(true).unwrap_or(Err(LaneError::Expired { lane: self.waiter.lane }));
                    }
                }
                None => notified.await,
            }
        }
    }

    /// The blocking twin of `wait`, for threads (no tokio runtime needed: it sleeps on a
    /// condition variable, with a timeout at the deadline, so `Expired` comes at the deadline
    /// even while every slot stays busy).
    pub fn wait_blocking(self) -> std::result::Result<Slot, LaneError> {
        let mut st = self.lanes.lock();
        let done = loop {
            if let Some(done) = self.settle(&mut st, false) {
                break done;
            }
            st = match self.waiter.deadline {
                None => self.waiter.ready.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        let done = self.settle(&mut st, true);
                        break done.unwrap_or(Err(LaneError::Expired { lane: self.waiter.lane }));
                    }
                    self.waiter.ready.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0
                }
            };
        };
        drop(st);
        done
    }

    /// Without waiting: `Ok(outcome)` once the ticket is settled (as `wait` would end), or
    /// `Err(ticket)`, the ticket back, while it still waits.
    pub fn try_wait(self) -> std::result::Result<std::result::Result<Slot, LaneError>, Ticket> {
        self.settle_now(false).ok_or(self)
    }

    /// `settle` under a lock taken (and let go) here.
    fn settle_now(&self, deadline_hit: bool) -> Option<std::result::Result<Slot, LaneError>> {
        let mut st = self.lanes.lock();
        self.settle(&mut st, deadline_hit)
    }

    /// Settle the ticket if its fate is known: granted (and its deadline not passed),
    /// expired, or closed. `deadline_hit`: the caller's timer says the deadline has passed.
    /// A slot granted in time but taken up after the deadline is passed on, not returned.
    fn settle(&self, st: &mut State, deadline_hit: bool) -> Option<std::result::Result<Slot, LaneError>> {
        let waiter = &self.waiter;
        let lane = waiter.lane;
        let expired = || deadline_hit || waiter.expired_at(Instant::now());
        match waiter.outcome() {
            Outcome::Waiting if expired() => {
                st.unqueue(waiter);
                waiter.set(Outcome::Done);
                st.counters[lane.index()].expired += 1;
                Some(Err(LaneError::Expired { lane }))
            }
            Outcome::Waiting => None,
            Outcome::Granted if expired() => {
                waiter.set(Outcome::Done);
                st.counters[lane.index()].expired += 1;
                self.lanes.release(st);
                Some(Err(LaneError::Expired { lane }))
            }
            Outcome::Granted => {
                waiter.set(Outcome::Done);
                st.counters[lane.index()].granted += 1;
                Some(Ok(Slot { lanes: Arc::clone(&self.lanes), lane }))
            }
            Outcome::Expired => {
                waiter.set(Outcome::Done);
                Some(Err(LaneError::Expired { lane }))
            }
            Outcome::Closed | Outcome::Done => Some(Err(LaneError::Closed)),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut st = self.lanes.lock();
        let waiter = &self.waiter;
        match waiter.outcome() {
            Outcome::Waiting => {
                st.unqueue(waiter);
                waiter.set(Outcome::Done);
                st.counters[waiter.lane.index()].cancelled += 1;
            }
            Outcome::Granted => {
                waiter.set(Outcome::Done);
                st.counters[waiter.lane.index()].cancelled += 1;
                self.lanes.release(&mut st);
            }
            Outcome::Expired | Outcome::Closed | Outcome::Done => {}
        }
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("lane", &self.waiter.lane)
            .field("deadline", &self.waiter.deadline)
            .field("outcome", &self.waiter.outcome())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    fn lanes(concurrency: usize, queue_limit: usize) -> Arc<Lanes> {
        Arc::new(Lanes::new(LanesOptions::new(concurrency, queue_limit)).expect("valid options"))
    }

    fn granted(entry: std::result::Result<Entry, LaneError>) -> Slot {
        match entry {
            Ok(Entry::Granted(slot)) => slot,
            other => panic!("expected a slot at once, got {other:?}"),
        }
    }

    fn queued(entry: std::result::Result<Entry, LaneError>) -> Ticket {
        match entry {
            Ok(Entry::Queued(ticket)) => ticket,
            other => panic!("expected to queue, got {other:?}"),
        }
    }

    /// The slot a settled ticket gave, or a panic if it still waits or failed.
    fn slot_of(ticket: Ticket) -> Slot {
        match ticket.try_wait() {
            Ok(Ok(slot)) => slot,
            Ok(Err(e)) => panic!("expected a slot, got {e}"),
            Err(ticket) => panic!("expected a slot, {ticket:?} still waits"),
        }
    }

    #[test]
    fn lanes_number_like_python_priority() {
        for (i, lane) in Lane::ALL.into_iter().enumerate() {
            assert_eq!(Lane::from_index(i as i64), Some(lane));
            assert_eq!(lane.index(), i);
            assert_eq!(Lane::parse(lane.as_str()), Some(lane));
        }
        assert_eq!(Lane::from_index(3), None);
        assert_eq!(Lane::from_index(-1), None);
        assert_eq!(Lane::Interactive.as_str(), "interactive");
        assert_eq!(Lane::parse("urgent"), None);
    }

    #[test]
    fn options_are_validated() {
        assert!(Lanes::new(LanesOptions::new(0, 10)).is_err());
        assert!(Lanes::new(LanesOptions { interactive_weight: 0, ..LanesOptions::new(1, 10) }).is_err());
        assert!(Lanes::new(LanesOptions { batch_weight: 0, ..LanesOptions::new(1, 10) }).is_err());
        assert!(Lanes::new(LanesOptions { batch_weight: MAX_WEIGHT + 1, ..LanesOptions::new(1, 10) }).is_err());
        let e = Lanes::new(LanesOptions::new(0, 10)).unwrap_err().to_string();
        assert!(e.contains("concurrency"), "{e}");
        assert!(Lanes::new(LanesOptions::new(1, 0)).is_ok());
    }

    #[test]
    fn slots_are_granted_up_to_concurrency_and_released_on_drop() {
        let lanes = lanes(2, 4);
        let a = granted(lanes.enter(Lane::Batch, None));
        let b = granted(lanes.enter(Lane::Interactive, None));
        assert_eq!(lanes.in_use(), 2);
        assert_eq!((a.lane(), b.lane()), (Lane::Batch, Lane::Interactive));
        let c = queued(lanes.enter(Lane::Batch, None));
        assert_eq!(lanes.queued(Lane::Batch), 1);
        a.release();
        // The freed slot went straight to the waiter, not back to the pool.
        assert_eq!(lanes.in_use(), 2);
        assert_eq!(lanes.queued(Lane::Batch), 0);
        let c = slot_of(c);
        drop(b);
        drop(c);
        assert_eq!(lanes.in_use(), 0);
        let stats = lanes.stats();
        assert_eq!(stats.batch.granted, 2);
        assert_eq!(stats.interactive.granted, 1);
    }

    #[test]
    fn a_newcomer_never_barges_past_waiters() {
        let lanes = lanes(1, 4);
        let held = granted(lanes.enter(Lane::Batch, None));
        let waiting = queued(lanes.enter(Lane::Batch, None));
        drop(held);
        // The slot is the waiter's, even before it comes for it; a realtime newcomer queues.
        let newcomer = queued(lanes.enter(Lane::Realtime, None));
        let slot = slot_of(waiting);
        drop(slot);
        drop(slot_of(newcomer));
        assert_eq!(lanes.in_use(), 0);
    }

    #[test]
    fn a_full_lane_refuses_at_once_naming_lane_and_limit() {
        let lanes = lanes(1, 2);
        let _held = granted(lanes.enter(Lane::Realtime, None));
        let _t1 = queued(lanes.enter(Lane::Batch, None));
        let _t2 = queued(lanes.enter(Lane::Batch, None));
        let e = lanes.enter(Lane::Batch, None).unwrap_err();
        assert_eq!(e, LaneError::QueueFull { lane: Lane::Batch, limit: 2 });
        let text = e.to_string();
        assert!(text.contains("\"batch\""), "{text}");
        assert!(text.contains("2 requests already wait"), "{text}");
        assert!(text.contains("raise queue_limit or concurrency, or shed load"), "{text}");
        // Limits are per lane: the others still queue.
        let _t3 = queued(lanes.enter(Lane::Interactive, None));
        assert_eq!(lanes.stats().batch.refused_full, 1);
        assert_eq!(lanes.stats().interactive.refused_full, 0);
    }

    #[test]
    fn queue_limit_zero_sheds_instead_of_queueing() {
        let lanes = lanes(1, 0);
        let held = granted(lanes.enter(Lane::Interactive, None));
        let e = lanes.enter(Lane::Realtime, None).unwrap_err();
        assert_eq!(e, LaneError::QueueFull { lane: Lane::Realtime, limit: 0 });
        drop(held);
        drop(granted(lanes.enter(Lane::Realtime, None)));
    }

    #[test]
    fn realtime_is_served_before_queued_others() {
        let lanes = lanes(1, 8);
        let mut held = granted(lanes.enter(Lane::Batch, None));
        let b = queued(lanes.enter(Lane::Batch, None));
        let i = queued(lanes.enter(Lane::Interactive, None));
        let r1 = queued(lanes.enter(Lane::Realtime, None));
        let r2 = queued(lanes.enter(Lane::Realtime, None));
        let mut order = Vec::new();
        for ticket in [r1, r2, i, b] {
            drop(held);
            held = slot_of(ticket);
            order.push(held.lane());
        }
        assert_eq!(order, [Lane::Realtime, Lane::Realtime, Lane::Interactive, Lane::Batch]);
        drop(held);
        assert_eq!(lanes.in_use(), 0);
    }

    /// Of per-lane FIFO queues of tickets, the slot that the one granted ticket gave (only a
    /// lane's head can have been granted).
    fn take_granted(tickets: &mut [VecDeque<Ticket>]) -> Slot {
        let mut got = None;
        for queue in tickets.iter_mut() {
            if let Some(head) = queue.pop_front() {
                match head.try_wait() {
                    Ok(done) => {
                        assert!(got.is_none(), "two waiters granted one slot");
                        got = Some(done.expect("granted"));
                    }
                    Err(head) => queue.push_front(head),
                }
            }
        }
        got.expect("a waiter got the slot")
    }

    /// Hold the only slot, queue `per_lane` requests in each of `queued_in`, then release
    /// `grants` times, returning the lanes in the order they were granted.
    fn grant_order(options: LanesOptions, queued_in: &[Lane], per_lane: usize, grants: usize) -> Vec<Lane> {
        let lanes = Arc::new(Lanes::new(options).expect("valid options"));
        let mut held = granted(lanes.enter(Lane::Realtime, None));
        let mut tickets: Vec<VecDeque<Ticket>> = (0..3).map(|_| VecDeque::new()).collect();
        for _ in 0..per_lane {
            for &lane in queued_in {
                tickets[lane.index()].push_back(queued(lanes.enter(lane, None)));
            }
        }
        let mut order = Vec::new();
        for _ in 0..grants {
            drop(held);
            held = take_granted(&mut tickets);
            order.push(held.lane());
        }
        drop(held);
        drop(tickets);
        assert_eq!(lanes.in_use(), 0);
        order
    }

    #[test]
    fn backlogged_interactive_and_batch_split_by_weight() {
        let order = grant_order(LanesOptions::new(1, 1000), &[Lane::Interactive, Lane::Batch], 150, 100);
        let interactive = order.iter().filter(|&&l| l == Lane::Interactive).count();
        assert_eq!((interactive, 100 - interactive), (80, 20));
        // Smooth: batch gets every fifth slot, not twenty in a row at the end.
        use Lane::{Batch as B, Interactive as I};
        assert_eq!(order[..10], [I, I, B, I, I, I, I, B, I, I]);

        let options = LanesOptions { interactive_weight: 2, batch_weight: 3, ..LanesOptions::new(1, 1000) };
        let order = grant_order(options, &[Lane::Interactive, Lane::Batch], 150, 100);
        let interactive = order.iter().filter(|&&l| l == Lane::Interactive).count();
        assert_eq!((interactive, 100 - interactive), (40, 60));
    }

    #[test]
    fn a_lane_alone_gets_every_grant() {
        for lane in [Lane::Interactive, Lane::Batch, Lane::Realtime] {
            let order = grant_order(LanesOptions::new(1, 100), &[lane], 60, 50);
            assert!(order.iter().all(|&l| l == lane), "{lane:?}: {order:?}");
        }
    }

    #[test]
    fn realtime_pauses_the_weighted_share_without_skewing_it() {
        let lanes = lanes(1, 100);
        let mut held = granted(lanes.enter(Lane::Batch, None));
        let mut tickets: Vec<VecDeque<Ticket>> = (0..3).map(|_| VecDeque::new()).collect();
        for _ in 0..20 {
            for lane in [Lane::Interactive, Lane::Batch] {
                tickets[lane.index()].push_back(queued(lanes.enter(lane, None)));
            }
        }
        let mut lower = Vec::new();
        for round in 0..10 {
            if round % 3 == 0 {
                tickets[Lane::Realtime.index()].push_back(queued(lanes.enter(Lane::Realtime, None)));
            }
            drop(held);
            held = take_granted(&mut tickets);
            if round % 3 == 0 {
                assert_eq!(held.lane(), Lane::Realtime, "round {round}: realtime goes first");
            } else {
                lower.push(held.lane());
            }
        }
        // The interactive:batch pattern carries on as if realtime had not come.
        use Lane::{Batch as B, Interactive as I};
        assert_eq!(lower, [I, I, B, I, I, I]);
    }

    #[test]
    fn a_passed_deadline_is_refused_at_entry_even_with_a_free_slot() {
        let lanes = lanes(1, 4);
        let e = lanes.enter(Lane::Interactive, Some(Instant::now())).unwrap_err();
        assert_eq!(e, LaneError::Expired { lane: Lane::Interactive });
        assert!(e.to_string().contains("deadline passed"), "{e}");
        assert_eq!(lanes.in_use(), 0);
        assert_eq!(lanes.stats().interactive.expired, 1);
    }

    #[test]
    fn an_expired_head_is_skipped_when_a_slot_frees() {
        let lanes = lanes(1, 4);
        let held = granted(lanes.enter(Lane::Batch, None));
        let late = queued(lanes.enter(Lane::Interactive, Some(Instant::now() + Duration::from_millis(5))));
        let patient = queued(lanes.enter(Lane::Interactive, None));
        std::thread::sleep(Duration::from_millis(10));
        drop(held);
        assert_eq!(late.try_wait().unwrap_err_or_expired(), LaneError::Expired { lane: Lane::Interactive });
        let slot = slot_of(patient);
        assert_eq!(lanes.stats().interactive, LaneCounters { granted: 1, expired: 1, ..Default::default() });
        drop(slot);
        assert_eq!(lanes.in_use(), 0);
    }

    #[test]
    fn a_slot_granted_in_time_but_taken_up_late_is_passed_on() {
        let lanes = lanes(1, 4);
        let held = granted(lanes.enter(Lane::Batch, None));
        let slow = queued(lanes.enter(Lane::Interactive, Some(Instant::now() + Duration::from_millis(200))));
        let next = queued(lanes.enter(Lane::Batch, None));
        drop(held); // granted to `slow`, well before its deadline
        assert_eq!(lanes.in_use(), 1);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(slow.try_wait().unwrap_err_or_expired(), LaneError::Expired { lane: Lane::Interactive });
        drop(slot_of(next));
        assert_eq!(lanes.in_use(), 0);
        assert_eq!(lanes.stats().interactive.expired, 1);
        assert_eq!(lanes.stats().interactive.granted, 0);
    }

    trait ExpectExpired {
        fn unwrap_err_or_expired(self) -> LaneError;
    }

    impl ExpectExpired for std::result::Result<std::result::Result<Slot, LaneError>, Ticket> {
        /// The error a settled ticket ended with; panics on a slot or a ticket still waiting.
        fn unwrap_err_or_expired(self) -> LaneError {
            match self {
                Ok(Err(e)) => e,
                Ok(Ok(slot)) => panic!("expected an error, got {slot:?}"),
                Err(ticket) => panic!("expected an error, {ticket:?} still waits"),
            }
        }
    }

    #[tokio::test]
    async fn an_async_waiter_expires_at_its_deadline_while_slots_stay_busy() {
        let lanes = lanes(1, 4);
        let held = granted(lanes.enter(Lane::Batch, None));
        let ticket = queued(lanes.enter(Lane::Realtime, Some(Instant::now() + Duration::from_millis(20))));
        assert_eq!(ticket.wait().await.unwrap_err(), LaneError::Expired { lane: Lane::Realtime });
        assert_eq!(lanes.queued(Lane::Realtime), 0);
        assert_eq!(lanes.in_use(), 1);
        drop(held);
        let stats = lanes.stats();
        assert_eq!(stats.realtime, LaneCounters { expired: 1, ..Default::default() });
        assert_eq!(stats.batch.granted, 1);
        assert_eq!(lanes.in_use(), 0);
    }

    #[test]
    fn a_blocking_waiter_expires_at_its_deadline_while_slots_stay_busy() {
        let lanes = lanes(1, 4);
        let held = granted(lanes.enter(Lane::Batch, None));
        let ticket = queued(lanes.enter(Lane::Interactive, Some(Instant::now() + Duration::from_millis(20))));
        let outcome =
            std::thread::spawn(move || ticket.wait_blocking().map(|slot| slot.lane())).join().expect("thread");
        assert_eq!(outcome, Err(LaneError::Expired { lane: Lane::Interactive }));
        assert_eq!(lanes.in_use(), 1);
        drop(held);
        assert_eq!(lanes.stats().interactive, LaneCounters { expired: 1, ..Default::default() });
        assert_eq!(lanes.in_use(), 0);
    }

    #[tokio::test]
    async fn an_async_waiter_with_a_deadline_is_granted_when_a_slot_frees_in_time() {
        let lanes = lanes(1, 4);
        let held = granted(lanes.enter(Lane::Batch, None));
        let ticket = queued(lanes.enter(Lane::Interactive, Some(Instant::now() + Duration::from_secs(60))));
        let waiting = tokio::spawn(ticket.wait());
        tokio::task::yield_now().await;
        drop(held);
        let slot = waiting.await.expect("task").expect("granted");
        assert_eq!(slot.lane(), Lane::Interactive);
        drop(slot);
        assert_eq!(lanes.in_use(), 0);
    }

    #[test]
    fn a_granted_ticket_dropped_unclaimed_passes_its_slot_on() {
        let lanes = lanes(1, 4);
        let held = granted(lanes.enter(Lane::Batch, None));
        let dropped = queued(lanes.enter(Lane::Interactive, None));
        let next = queued(lanes.enter(Lane::Interactive, None));
        drop(held); // granted to `dropped`
        drop(dropped);
        let slot = slot_of(next);
        assert_eq!(lanes.in_use(), 1);
        drop(slot);
        assert_eq!(lanes.in_use(), 0);
        assert_eq!(lanes.stats().interactive, LaneCounters { granted: 1, cancelled: 1, ..Default::default() });
    }

    /// Counts the holders of a slot, and the most there ever were at once.
    struct Holding<'a>(&'a AtomicUsize);

    impl<'a> Holding<'a> {
        fn new(active: &'a AtomicUsize, max: &AtomicUsize) -> Self {
            let now = active.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(now, Ordering::SeqCst);
            Holding(active)
        }
    }

    impl Drop for Holding<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn cancelled_async_waiters_never_leak_a_slot() {
        let lanes = lanes(2, 100);
        let active = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..60 {
            let (lanes, active, max) = (Arc::clone(&lanes), Arc::clone(&active), Arc::clone(&max));
            tasks.push(tokio::spawn(async move {
                let slot = match lanes.enter(Lane::ALL[i % 3], None)? {
                    Entry::Granted(slot) => slot,
                    // Some give up after a moment: the future (and its ticket) is dropped.
                    Entry::Queued(ticket) if i % 4 == 1 => {
                        match tokio::time::timeout(Duration::from_millis(1), ticket.wait()).await {
                            Ok(slot) => slot?,
                            Err(_) => return Ok(false),
                        }
                    }
                    Entry::Queued(ticket) => ticket.wait().await?,
                };
                // An abort can land while the slot is held: the count then falls with the
                // future's drop, before the slot is given back (a tuple drops in order).
                let holding = (Holding::new(&active, &max), slot);
                tokio::time::sleep(Duration::from_millis(1)).await;
                drop(holding);
                Ok::<bool, LaneError>(true)
            }));
        }
        // Abort a few mid-flight: waiting, holding, or about to be granted.
        for task in tasks.iter().skip(2).step_by(7) {
            task.abort();
        }
        for task in tasks {
            match task.await {
                Ok(done) => {
                    done.expect("no deadlines, no closing");
                }
                Err(e) => assert!(e.is_cancelled()),
            }
        }
        assert!((1..=2).contains(&max.load(Ordering::SeqCst)));
        assert_eq!(active.load(Ordering::SeqCst), 0);
        assert_eq!(lanes.in_use(), 0);
        for lane in Lane::ALL {
            assert_eq!(lanes.queued(lane), 0);
        }
        // And the slots are really back: both can be taken at once.
        let a = granted(lanes.enter(Lane::Batch, None));
        let b = granted(lanes.enter(Lane::Batch, None));
        drop((a, b));
        assert_eq!(lanes.in_use(), 0);
    }

    #[test]
    fn blocking_waiters_on_many_threads_all_run_within_concurrency() {
        const THREADS: usize = 24;
        const ROUNDS: usize = 5;
        let lanes = lanes(3, THREADS);
        let active = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let ran = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (lanes, active, max, ran) =
                    (Arc::clone(&lanes), Arc::clone(&active), Arc::clone(&max), Arc::clone(&ran));
                std::thread::spawn(move || {
                    for round in 0..ROUNDS {
                        let slot = match lanes.enter(Lane::ALL[(t + round) % 3], None).expect("room in the queue") {
                            Entry::Granted(slot) => slot,
                            Entry::Queued(ticket) => ticket.wait_blocking().expect("granted"),
                        };
                        let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(200));
                        active.fetch_sub(1, Ordering::SeqCst);
                        ran.fetch_add(1, Ordering::SeqCst);
                        drop(slot);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        assert_eq!(ran.load(Ordering::SeqCst), THREADS * ROUNDS);
        assert!((1..=3).contains(&max.load(Ordering::SeqCst)));
        assert_eq!(lanes.in_use(), 0);
        let stats = lanes.stats();
        let granted: u64 = Lane::ALL.into_iter().map(|l| stats.lane(l).granted).sum();
        assert_eq!(granted, (THREADS * ROUNDS) as u64);
    }

    #[test]
    fn closing_wakes_waiters_and_refuses_newcomers() {
        let lanes = lanes(1, 4);
        let held = granted(lanes.enter(Lane::Batch, None));
        let ticket = queued(lanes.enter(Lane::Batch, None));
        let blocked = std::thread::spawn(move || ticket.wait_blocking().map(|slot| slot.lane()));
        std::thread::sleep(Duration::from_millis(5)); // likely asleep in wait_blocking by now; either way works
        lanes.close();
        assert_eq!(blocked.join().expect("thread"), Err(LaneError::Closed));
        assert!(lanes.is_closed());
        assert_eq!(lanes.enter(Lane::Realtime, None).unwrap_err(), LaneError::Closed);
        drop(held);
        assert_eq!(lanes.in_use(), 0);
    }

    /// Twice the work the slots can take: one slot frees per tick on average (4 slots, each
    /// held 4 ticks) while two requests arrive per tick (a batch one, and an interactive or,
    /// every fourth tick, a realtime one). Realtime is always next: whenever slots free while
    /// realtime requests wait, they get them, and none is ever refused. Batch is squeezed
    /// (and shed at its queue limit) but still gets its weighted share of what is left.
    #[test]
    fn under_twice_the_load_realtime_is_always_next_and_batch_still_progresses() {
        const HOLD: u64 = 4;
        const TICKS: u64 = 400;
        let lanes = lanes(4, 8);
        let mut running: Vec<(u64, Slot)> = Vec::new(); // (finishing tick, slot)
        let mut waiting: Vec<(u64, Ticket)> = Vec::new(); // (tick it queued, ticket)
        let mut waits: [Vec<u64>; 3] = Default::default();
        for tick in 0..TICKS {
            let realtime_waiting = waiting.iter().filter(|(_, t)| t.lane() == Lane::Realtime).count();
            let before = running.len();
            running.retain(|(finish, _)| *finish > tick);
            let freed = before - running.len();
            let mut realtime_granted = 0;
            for (since, ticket) in std::mem::take(&mut waiting) {
                match ticket.try_wait() {
                    Err(ticket) => waiting.push((since, ticket)),
                    Ok(Ok(slot)) => {
                        realtime_granted += usize::from(slot.lane() == Lane::Realtime);
                        waits[slot.lane().index()].push(tick - since);
                        running.push((tick + HOLD, slot));
                    }
                    Ok(Err(e)) => panic!("no deadlines here: {e}"),
                }
            }
            assert_eq!(realtime_granted, realtime_waiting.min(freed), "tick {tick}: realtime is next");
            let second = if tick % 4 == 0 { Lane::Realtime } else { Lane::Interactive };
            for lane in [Lane::Batch, second] {
                match lanes.enter(lane, None) {
                    Ok(Entry::Granted(slot)) => {
                        waits[lane.index()].push(0);
                        running.push((tick + HOLD, slot));
                    }
                    Ok(Entry::Queued(ticket)) => waiting.push((tick, ticket)),
                    Err(LaneError::QueueFull { .. }) => {}
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            assert!(lanes.in_use() <= 4);
        }
        let stats = lanes.stats();
        // Realtime: never refused, every one served, its wait bounded by one slot's hold.
        assert_eq!(stats.realtime.refused_full, 0);
        assert_eq!(waits[Lane::Realtime.index()].len() + lanes.queued(Lane::Realtime), (TICKS / 4) as usize);
        assert!(waits[Lane::Realtime.index()].iter().all(|&w| w <= HOLD), "{:?}", waits[0]);
        // Overloaded lower lanes are shed, yet batch keeps getting slots all along.
        assert!(stats.interactive.refused_full > 0 && stats.batch.refused_full > 0);
        let batch_grants = stats.batch.granted;
        assert!(batch_grants >= TICKS / 10, "batch starved: {stats:?}");
        assert!(stats.interactive.granted > 3 * batch_grants, "{stats:?}");
        drop(waiting);
        drop(running);
        assert_eq!(lanes.in_use(), 0);
    }
}
