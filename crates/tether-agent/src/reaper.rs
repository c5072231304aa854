//! The one owner of `waitpid`: every child of the agent, and every orphan handed to it as
//! PID 1 or subreaper, is reaped here and nowhere else.
//!
//! Spawning holds the registry lock across fork and registration, and the reaper calls
//! `waitpid` only while holding the same lock; so a child that exits at once can never be
//! reaped before its session has registered for its status.

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// Registered children and the sessions waiting for them.
#[derive(Clone, Default)]
pub struct Reaper {
    waiting: Arc<Mutex<HashMap<i32, oneshot::Sender<WaitStatus>>>>,
}

/// Holds the registry while a child is being spawned.
pub struct SpawnGuard<'a> {
    waiting: MutexGuard<'a, HashMap<i32, oneshot::Sender<WaitStatus>>>,
}

impl SpawnGuard<'_> {
    /// Registers `pid`; the receiver yields its final status.
    pub fn register(&mut self, pid: u32) -> oneshot::Receiver<WaitStatus> {
        let (tx, rx) = oneshot::channel();
        self.waiting.insert(pid as i32, tx);
        rx
    }
}

impl Reaper {
    /// Starts reaping on the current runtime. Call before the first spawn.
    pub fn start() -> std::io::Result<Reaper> {
        let reaper = Reaper::default();
        let mut sigchld = signal(SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap();
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(reaper)
    }

    /// Takes the registry for a spawn: fork, then [`SpawnGuard::register`], then drop.
    pub fn lock(&self) -> SpawnGuard<'_> {
        SpawnGuard {
            waiting: self.waiting.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Collects every exited child now.
    fn reap(&self) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    match waiting.remove(&pid.as_raw()) {
                        Some(tx) => {
                            let _ = tx.send(status);
                        }
                        None => tracing::debug!(pid = pid.as_raw(), "reaped an orphan"),
                    }
                }
            }
        }
    }
}
