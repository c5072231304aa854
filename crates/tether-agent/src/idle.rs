//! Giving memory back once the agent is idle again.
//!
//! An agent is idle most of its life, between bursts that may move gigabytes. glibc keeps
//! blocks freed after such a burst on its heap (its thresholds grow with the sizes it has
//! seen), so an agent that once streamed a large output would stay megabytes larger for
//! good. A second after the last session ends, the agent asks glibc to return what is
//! free. Only then: trimming between back-to-back sessions would just fault the same pages
//! back in.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How long the agent must have been idle before it trims.
const QUIET: Duration = Duration::from_secs(1);

/// Counts running sessions; trims the heap once they are all gone.
#[derive(Default)]
pub struct Idle {
    active: AtomicUsize,
    went_idle: Notify,
}

/// Held by a running session.
pub struct Busy(Arc<Idle>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.went_idle.notify_one();
        }
    }
}

impl Idle {
    /// Starts the trimming task on the current runtime.
    pub fn start() -> Arc<Idle> {
        let idle = Arc::new(Idle::default());
        let watcher = idle.clone();
        tokio::spawn(async move {
            loop {
                watcher.went_idle.notified().await;
                tokio::time::sleep(QUIET).await;
                if watcher.active.load(Ordering::Acquire) == 0 {
                    trim();
                }
            }
        });
        idle
    }

    /// Marks a session running until the returned guard drops.
    pub fn busy(self: &Arc<Idle>) -> Busy {
        self.active.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }
}

fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the system.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_last_session_to_end_wakes_the_trimmer_and_earlier_ones_do_not() {
        let idle = Arc::new(Idle::default());
        let (a, b) = (idle.busy(), idle.busy());
        drop(a);
        let early =
            tokio::time::timeout(Duration::from_millis(10), idle.went_idle.notified()).await;
        assert!(early.is_err(), "one session still runs");
        drop(b);
        let late = tokio::time::timeout(Duration::from_millis(10), idle.went_idle.notified()).await;
        assert!(late.is_ok(), "the agent is idle");
        assert_eq!(idle.active.load(Ordering::Acquire), 0);
    }
}
