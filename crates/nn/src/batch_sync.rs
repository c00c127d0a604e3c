//! Sums shared by the parts of one batch, each recorded on a tape of its own on a thread of
//! its own: what lets batch normalisation normalise with the statistics of the whole batch,
//! whatever the number of threads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long a part that arrives early spins, watching for the round to complete, before it
/// sleeps: the parts of a batch do equal work and arrive close together, and waking a sleeping
/// thread costs more than the wait (most on a virtual machine, whose idle CPU halts until the
/// host wakes it). A CNN epoch at 2 threads took 5% less time this way.
const SPIN: Duration = Duration::from_micros(200);

/// A meeting point for the `parts` parts of a batch. Each part's tape
/// ([`Tape::share_batch`](crate::Tape::share_batch)) brings its per-channel sums to each batch
/// normalisation, forward and backward, and every part leaves with the whole batch's: the
/// parts' sums added in part order, so that a run is the same for the same number of parts.
///
/// Every part must record the same ops, each part on a thread of its own (a part waits for the
/// others). A part that panics must say so ([`BatchSync::abandon`]), or the others would wait
/// for it forever.
#[derive(Debug)]
pub struct BatchSync {
    parts: usize,
    state: Mutex<Round>,
    turn: Condvar,
    /// The rounds completed, as `state`'s `generation`, for parts to watch without the lock.
    completed: AtomicU64,
    /// Whether a part that arrives early spins first: only when every part can have a CPU of
    /// its own, or the spinning would take CPU time from the parts it waits for.
    spin: bool,
}

#[derive(Debug, Default)]
struct Round {
    /// Rounds completed.
    generation: u64,
    /// Parts that have brought their sums to the round under way.
    arrived: usize,
    /// Each part's sums for the round under way.
    brought: Vec<Vec<f64>>,
    /// The last round's totals. Every part copies them before it can bring its sums to the
    /// next round, which completes only when all have: so they are never overwritten unread.
    totals: Vec<f64>,
    abandoned: bool,
}

impl BatchSync {
    /// A meeting point for `parts` parts (at least 1).
    pub fn new(parts: usize) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::spinning(parts, parts <= cpus)
    }

    /// [`BatchSync::new`], saying whether parts that arrive early spin first.
    fn spinning(parts: usize, spin: bool) -> Self {
        let round = Round { brought: vec![Vec::new(); parts.max(1)], ..Round::default() };
        Self { parts: parts.max(1), state: Mutex::new(round), turn: Condvar::new(), completed: AtomicU64::new(0), spin }
    }

    /// The number of parts.
    pub fn parts(&self) -> usize {
        self.parts
    }

    /// Replaces `values`, part `part`'s sums, with the sums of every part, once every part has
    /// brought its own.
    ///
    /// # Panics
    /// If another part has [abandoned](BatchSync::abandon) the batch.
    pub(crate) fn all_reduce(&self, part: usize, values: &mut [f64]) {
        if self.parts == 1 {
            return;
        }
        let mut state = self.lock();
        let generation = state.generation;
        state.brought[part].clear();
        state.brought[part].extend_from_slice(values);
        state.arrived += 1;
        if state.arrived == self.parts {
            let round = &mut *state;
            let totals = &mut round.totals;
            totals.clear();
            totals.resize(values.len(), 0.0);
            for brought in &round.brought {
                assert_eq!(brought.len(), totals.len(), "the parts of a batch recorded different ops");
                totals.iter_mut().zip(brought).for_each(|(t, &b)| *t += b);
            }
            round.arrived = 0;
            round.generation += 1;
            self.completed.store(round.generation, Ordering::Release);
            self.turn.notify_all();
        } else {
            if self.spin {
                drop(state);
                let start = Instant::now();
                while self.completed.load(Ordering::Acquire) == generation && start.elapsed() < SPIN {
                    std::hint::spin_loop();
                }
                state = self.lock();
            }
            while state.generation == generation && !state.abandoned {
                state = self.turn.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
        }
        if state.abandoned {
            drop(state);
            panic!("another part of the batch failed");
        }
        values.copy_from_slice(&state.totals);
    }

    /// Tells the other parts that one has failed: those waiting, and those that come to wait,
    /// panic instead.
    pub fn abandon(&self) {
        self.lock().abandoned = true;
        self.turn.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, Round> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_leaves_with_the_sums_of_all_in_part_order() {
        // Parts that spin before they sleep and parts that sleep at once, whatever the CPUs.
        for (parts, spin) in [(2, true), (2, false), (3, true), (3, false)] {
            let sync = BatchSync::spinning(parts, spin);
            let results: Vec<Vec<f64>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..parts)
                    .map(|part| {
                        let sync = &sync;
                        s.spawn(move || {
                            let mut out = Vec::new();
                            for round in 0..50 {
                                let mut v = [part as f64 + round as f64, 1.0];
                                sync.all_reduce(part, &mut v);
                                out.extend(v);
                            }
                            out
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let (p, base) = (parts as f64, (0..parts).sum::<usize>() as f64);
            for r in &results {
                for round in 0..50 {
                    assert_eq!(
                        &r[2 * round..2 * round + 2],
                        &[base + p * round as f64, p],
                        "{parts} parts, spin {spin}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_part_that_fails_releases_the_others() {
        let sync = BatchSync::new(2);
        std::thread::scope(|s| {
            let waiting = s.spawn(|| std::panic::catch_unwind(|| sync.all_reduce(0, &mut [1.0])).is_err());
            std::thread::sleep(std::time::Duration::from_millis(20));
            sync.abandon();
            assert!(waiting.join().unwrap(), "the waiting part panics rather than waiting forever");
        });
    }
}
