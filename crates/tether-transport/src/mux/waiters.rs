//! Writers waiting for the link's write half, woken one at a time.
//!
//! A large write waits for the link rather than copy its buffer into the send queue.
//! With a hundred connections streaming over one link, waking every waiter whenever the
//! link came free cost a hundred task polls per packet, of which one got the link. Here
//! the oldest waiter alone is woken each time (the link comes free again after its
//! write and wakes the next), so waiters take turns in order.
//!
//! A woken writer may never come: its task can drop the write it was woken for. Then
//! nobody takes the link and the others would wait on. So the time of the latest
//! hand-over is kept, and the writer task wakes every waiter once [`GRACE`] passes
//! without another one while writers are still waiting.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash};
use std::task::Waker;
use std::time::{Duration, Instant};
use tether_vsock::{ConnId, ConnIdHasher};

/// How long waiters stay asleep after a hand-over before all of them are woken.
pub(crate) const GRACE: Duration = Duration::from_millis(2);

/// Connections whose writer waits for the link, oldest first.
///
/// Every write lists and forgets its connection, so both are O(1): forgetting drops the
/// connection from `listed` only, and its stale ticket in `order` is skipped when it
/// comes up (or swept out once stale tickets outnumber live ones).
pub(crate) struct LinkWaiters<K = ConnId> {
    /// Tickets in the order they were listed; a ticket is live while `listed` holds it.
    order: VecDeque<(K, u64)>,
    listed: HashMap<K, (u64, Waker), BuildHasherDefault<ConnIdHasher>>,
    next_ticket: u64,
    /// The latest hand-over that left writers waiting.
    handed_at: Option<Instant>,
}

impl<K> Default for LinkWaiters<K> {
    fn default() -> Self {
        LinkWaiters {
            order: VecDeque::new(),
            listed: HashMap::default(),
            next_ticket: 0,
            handed_at: None,
        }
    }
}

impl<K: Copy + Eq + Hash> LinkWaiters<K> {
    /// Lists connection `id`'s writer, keeping its place if already listed (one writer
    /// per connection).
    pub fn wait(&mut self, id: K, waker: &Waker) {
        if let Some((_, w)) = self.listed.get_mut(&id) {
            w.clone_from(waker);
            return;
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.listed.insert(id, (ticket, waker.clone()));
        self.order.push_back((id, ticket));
        if self.order.len() > 2 * self.listed.len() + 16 {
            let listed = &self.listed;
            self.order.retain(|&(i, t)| live(listed, i, t));
        }
    }

    /// Takes connection `id`'s writer off the list.
    pub fn forget(&mut self, id: K) {
        self.listed.remove(&id);
    }

    /// The link came free: wakes the oldest waiter. Returns when to wake the rest if
    /// nobody takes the link in between, when writers are left waiting. The clock is
    /// read only then: every idle flush hands over, mostly to nobody.
    pub fn hand_over(&mut self, now: impl FnOnce() -> Instant) -> Option<Instant> {
        while let Some((id, ticket)) = self.order.pop_front() {
            if live(&self.listed, id, ticket) {
                let (_, w) = self.listed.remove(&id).expect("just found");
                w.wake();
                break;
            }
        }
        self.handed_at = (!self.listed.is_empty()).then(now);
        self.handed_at.map(|t| t + GRACE)
    }

    /// Wakes every waiter: the session ended, or a hand-over went unanswered.
    pub fn wake_all(&mut self) {
        self.handed_at = None;
        self.order.clear();
        for (_, (_, w)) in self.listed.drain() {
            w.wake();
        }
    }

    /// For the writer task: wakes everyone when the latest hand-over is [`GRACE`] old
    /// and writers still wait; otherwise returns when to look again.
    pub fn check(&mut self, now: Instant) -> Option<Instant> {
        let due = self.handed_at? + GRACE;
        if now < due {
            return Some(due);
        }
        self.wake_all();
        None
    }

    /// Writers listed now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.listed.len()
    }
}

/// Whether `ticket` is still `id`'s place in the queue (not forgotten, nor listed anew).
fn live<K: Eq + Hash, W>(
    listed: &HashMap<K, (u64, W), impl BuildHasher>,
    id: K,
    ticket: u64,
) -> bool {
    listed.get(&id).is_some_and(|(t, _)| *t == ticket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn wakers(n: usize) -> Vec<(Arc<Count>, Waker)> {
        (0..n)
            .map(|_| {
                let c = Arc::new(Count::default());
                (c.clone(), Waker::from(c))
            })
            .collect()
    }

    fn woken(w: &[(Arc<Count>, Waker)]) -> Vec<usize> {
        w.iter().map(|(c, _)| c.0.load(Ordering::SeqCst)).collect()
    }

    /// `n` counting wakers, each listed under its index.
    fn listed(n: usize) -> (Vec<(Arc<Count>, Waker)>, LinkWaiters<usize>) {
        let w = wakers(n);
        let mut q = LinkWaiters::default();
        for (i, (_, waker)) in w.iter().enumerate() {
            q.wait(i, waker);
        }
        (w, q)
    }

    #[test]
    fn each_hand_over_wakes_the_oldest_waiter_only() {
        let (w, mut q) = listed(3);
        let now = Instant::now();
        q.wait(0, &w[0].1);
        assert_eq!(q.len(), 3, "listing again keeps one entry and its place");
        assert_eq!(q.hand_over(|| now), Some(now + GRACE));
        assert_eq!(woken(&w), [1, 0, 0]);
        q.forget(1);
        let no_clock = || -> Instant { panic!("clock read with nobody left waiting") };
        assert_eq!(q.hand_over(no_clock), None, "nobody left waiting");
        assert_eq!(woken(&w), [1, 0, 1]);
        assert_eq!(q.hand_over(no_clock), None);
        assert_eq!(woken(&w), [1, 0, 1]);
    }

    #[test]
    fn an_unanswered_hand_over_wakes_everyone_after_the_grace() {
        let (w, mut q) = listed(3);
        let now = Instant::now();
        assert_eq!(q.check(now), None, "no hand-over yet");
        q.hand_over(|| now);
        assert_eq!(q.check(now + GRACE / 2), Some(now + GRACE));
        assert_eq!(woken(&w), [1, 0, 0]);
        // A later hand-over moves the deadline: the link is moving.
        q.hand_over(|| now + GRACE / 2);
        assert_eq!(q.check(now + GRACE), Some(now + GRACE / 2 + GRACE));
        assert_eq!(woken(&w), [1, 1, 0]);
        assert_eq!(q.check(now + 2 * GRACE), None);
        assert_eq!(woken(&w), [1, 1, 1]);
        assert_eq!(q.len(), 0);
        assert_eq!(q.check(now + 10 * GRACE), None, "nothing armed any more");
    }

    #[test]
    fn a_forgotten_writer_listed_again_goes_to_the_back() {
        let (w, mut q) = listed(3);
        let now = Instant::now();
        q.forget(0);
        q.wait(0, &w[0].1);
        q.hand_over(|| now);
        assert_eq!(woken(&w), [0, 1, 0]);
        q.hand_over(|| now);
        assert_eq!(woken(&w), [0, 1, 1]);
        assert_eq!(
            q.hand_over(|| now),
            None,
            "the last one leaves nobody waiting"
        );
        assert_eq!(woken(&w), [1, 1, 1]);
    }

    #[test]
    fn listing_and_forgetting_over_and_over_keeps_the_order_bounded() {
        let (w, mut q) = listed(2);
        for _ in 0..10_000 {
            q.forget(1);
            q.wait(1, &w[1].1);
        }
        assert!(
            q.order.len() <= 2 * 2 + 17,
            "{} tickets kept",
            q.order.len()
        );
        q.hand_over(Instant::now);
        assert_eq!(
            woken(&w),
            [1, 0],
            "the oldest live ticket survives the sweeps first"
        );
        q.hand_over(Instant::now);
        assert_eq!(woken(&w), [1, 1]);
    }

    #[test]
    fn wake_all_empties_the_list() {
        let (w, mut q) = listed(2);
        q.wake_all();
        assert_eq!(woken(&w), [1, 1]);
        assert_eq!(q.len(), 0);
    }
}
