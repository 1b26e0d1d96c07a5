//! The worker threads that decode and encode: `convert`, `send` and the daemon's delivery from
//! its queue hand them batches (a chunk of input, a read of the queue) and take the results
//! back in the order they handed them over, so that records leave in input order per
//! destination however the work was spread over the cores.
//!
//! A job runs on tokio's blocking threads (no thread pool of our own) once one of `jobs` slots
//! is free: at most `jobs` run at once, whatever asks, so several destinations replaying their
//! backlogs together do not use more cores than there are.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// The default number of workers: one per core.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The default number of workers of `convert` and `send`: one more than the cores. Besides the
/// workers they run an input thread, the in-order hand-over and the writer, which together take
/// about a third of a core and leave the cores idle in turns; one more worker fills those gaps.
/// Measured on 2 cores, `send` of 200,000 alerts, 2 and 3 workers taking turns: median wall
/// time 1.08 → 0.93 s (6 runs each) and, later that day on a noisier machine, 1.07 → 1.04 s (8
/// runs each), the same CPU time; 4 workers the same as 3 (README, Backfill). The daemon keeps
/// [`default_jobs`]: its pollers, writers and HTTP server share the cores.
pub fn stream_jobs() -> usize {
    default_jobs() + 1
}

/// Slots for jobs; clones share them.
#[derive(Clone, Debug)]
pub struct Workers {
    slots: Arc<Semaphore>,
    jobs: usize,
}

impl Workers {
    /// `jobs` at once (at least one).
    pub fn new(jobs: usize) -> Workers {
        let jobs = jobs.max(1);
        Workers {
            slots: Arc::new(Semaphore::new(jobs)),
            jobs,
        }
    }

    pub fn jobs(&self) -> usize {
        self.jobs
    }

    /// Runs `job` on a blocking thread once a slot is free; its result is the handle's.
    pub async fn spawn<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        // The semaphore is never closed.
        let slot = self.slots.clone().acquire_owned().await.ok();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            job()
        })
    }
}

/// Jobs whose results are taken in the order they were started, at most `max` at once.
pub struct InOrder<T> {
    running: VecDeque<JoinHandle<T>>,
    max: usize,
}

impl<T> InOrder<T> {
    pub fn new(max: usize) -> Self {
        InOrder {
            running: VecDeque::new(),
            max: max.max(1),
        }
    }

    /// Room for another job.
    pub fn has_room(&self) -> bool {
        self.running.len() < self.max
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    pub fn push(&mut self, job: JoinHandle<T>) {
        self.running.push_back(job);
    }

    /// The oldest job's result (pending forever when there is none: use in `select!` with
    /// `if !is_empty()`). A job that panicked is re-raised here.
    pub async fn next(&mut self) -> T {
        let Some(oldest) = self.running.front_mut() else {
            return std::future::pending().await;
        };
        let result = oldest.await;
        self.running.pop_front();
        match result {
            Ok(t) => t,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn results_come_back_in_order_and_no_more_than_jobs_run_at_once() {
        let workers = Workers::new(3);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut in_order = InOrder::new(8);
        let mut got = Vec::new();
        for i in 0..40u64 {
            if !in_order.has_room() {
                got.push(in_order.next().await);
            }
            let (running, most) = (running.clone(), most.clone());
            in_order.push(
                workers
                    .spawn(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        // Later jobs finish first.
                        std::thread::sleep(Duration::from_millis(20 - i % 8 * 2));
                        running.fetch_sub(1, Ordering::SeqCst);
                        i
                    })
                    .await,
            );
        }
        while !in_order.is_empty() {
            got.push(in_order.next().await);
        }
        assert_eq!(got, (0..40).collect::<Vec<_>>());
        let most = most.load(Ordering::SeqCst);
        assert!((2..=3).contains(&most), "{most} at once");
    }
}
