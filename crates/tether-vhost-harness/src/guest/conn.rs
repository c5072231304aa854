//! One guest-side stream connection with blocking, time-bounded calls.

use super::driver::{Shared, State};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};
use tether_vsock::{CloseReason, ConnId, Shutdown, StreamError};
use thiserror::Error;

/// Why a connection call failed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ConnError {
    /// Nothing happened within the timeout.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// The connection ended (reset, refused, protocol violation...).
    #[error("{0}")]
    Closed(CloseReason),
    /// Writing after a shutdown of this direction (ours or the peer's).
    #[error("broken pipe")]
    BrokenPipe,
    /// The handle was closed already.
    #[error("connection already closed by this side")]
    Released,
    /// The guest driver stopped.
    #[error("{0}")]
    Stopped(String),
}

/// A guest socket. Dropping it closes it (SHUTDOWN both ways, then RST exchange).
#[derive(Debug)]
pub struct GuestConn {
    shared: Arc<Shared>,
    id: ConnId,
    timeout: Duration,
    released: bool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

impl GuestConn {
    pub(crate) fn new(shared: Arc<Shared>, id: ConnId, timeout: Duration) -> GuestConn {
        GuestConn {
            shared,
            id,
            timeout,
            released: false,
        }
    }

    /// `(guest port, host port)`.
    pub fn ports(&self) -> Option<(u32, u32)> {
        self.shared.lock().engine.ports(self.id)
    }

    /// Sets the bound on each blocking call.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The bound on each blocking call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Bytes received and not yet read.
    pub fn readable_len(&self) -> usize {
        self.shared.lock().engine.readable_len(self.id)
    }

    /// Writes all of `data`, waiting for credit and queue room; fails when no byte could
    /// be queued for a whole timeout.
    ///
    /// Each call's bytes leave in packets of their own, as a Linux guest's `sendmsg` does:
    /// the call first waits until earlier writes have left the send queue, so the engine
    /// never joins two writes into one packet (which would flatter a slow backend in the
    /// small-write benchmarks).
    pub fn write_all(&self, mut data: &[u8]) -> Result<(), ConnError> {
        let mut deadline = Instant::now() + self.timeout;
        let mut st = self.lock()?;
        while st.engine.send_queue_len(self.id) > 0 {
            st = self.wait(st, deadline)?;
        }
        while !data.is_empty() {
            match st.engine.send(self.id, data) {
                Ok(n) if n > 0 => {
                    data = &data[n..];
                    deadline = Instant::now() + self.timeout;
                    self.flush(&mut st)?;
                    continue;
                }
                Ok(_) | Err(StreamError::WouldBlock) => {}
                Err(e) => return Err(stream_error(e)),
            }
            st = self.wait(st, deadline)?;
        }
        Ok(())
    }

    /// Reads what is there, waiting up to the timeout for something. `Ok(0)` is end of
    /// stream.
    pub fn read(&self, buf: &mut [u8]) -> Result<usize, ConnError> {
        let deadline = Instant::now() + self.timeout;
        let mut st = self.lock()?;
        loop {
            match st.engine.recv(self.id, buf) {
                Ok(n) => {
                    // The read may owe the peer a credit update.
                    self.flush(&mut st)?;
                    return Ok(n);
                }
                Err(StreamError::WouldBlock) => {}
                Err(e) => return Err(stream_error(e)),
            }
            st = self.wait(st, deadline)?;
        }
    }

    /// Fills `buf` exactly; end of stream before that is [`ConnError::Closed`].
    pub fn read_exact(&self, mut buf: &mut [u8]) -> Result<(), ConnError> {
        while !buf.is_empty() {
            match self.read(buf)? {
                0 => return Err(ConnError::Closed(CloseReason::Graceful)),
                n => buf = &mut buf[n..],
            }
        }
        Ok(())
    }

    /// Reads until end of stream; each wait for more is bounded by the timeout.
    pub fn read_to_end(&self) -> Result<Vec<u8>, ConnError> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.read(&mut buf)? {
                0 => return Ok(out),
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Half-close: SHUTDOWN(SEND) once queued data is out; reading continues.
    pub fn shutdown_write(&self) -> Result<(), ConnError> {
        self.shutdown(Shutdown::Write)
    }

    /// SHUTDOWN(RCV): we will read no more.
    pub fn shutdown_read(&self) -> Result<(), ConnError> {
        self.shutdown(Shutdown::Read)
    }

    fn shutdown(&self, how: Shutdown) -> Result<(), ConnError> {
        let mut st = self.lock()?;
        st.engine.shutdown(self.id, how).map_err(stream_error)?;
        self.flush(&mut st)
    }

    /// Waits up to the timeout for the connection to end; gives why.
    pub fn wait_closed(&self) -> Result<CloseReason, ConnError> {
        let deadline = Instant::now() + self.timeout;
        let mut st = self.lock()?;
        loop {
            if let Some(r) = st.closed.get(&self.id) {
                return Ok(*r);
            }
            st = self.wait(st, deadline)?;
        }
    }

    /// Closes the connection (SHUTDOWN both ways; the peer's RST or a timeout ends it).
    pub fn close(mut self) {
        self.release();
    }

    fn release(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        let mut st = self.shared.lock();
        st.engine.close(Instant::now(), self.id);
        st.closed.remove(&self.id);
        let _ = st.flush();
        drop(st);
        // The close armed a timer the driver has to know about.
        self.shared.poke();
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, ConnError> {
        let st = self.shared.lock();
        if let Some(f) = &st.fatal {
            return Err(ConnError::Stopped(f.clone()));
        }
        Ok(st)
    }

    fn flush(&self, st: &mut State) -> Result<(), ConnError> {
        let changed = st
            .flush()
            .map_err(|e| ConnError::Stopped(format!("guest ring error: {e}")))?;
        if changed {
            // Others may wait on what this flush changed (closes, freed tx room).
            self.shared.changed.notify_all();
        }
        Ok(())
    }

    fn wait<'a>(
        &'a self,
        st: MutexGuard<'a, State>,
        deadline: Instant,
    ) -> Result<MutexGuard<'a, State>, ConnError> {
        let st = self
            .shared
            .wait_until(st, deadline)
            .ok_or(ConnError::TimedOut(self.timeout))?;
        if let Some(f) = &st.fatal {
            return Err(ConnError::Stopped(f.clone()));
        }
        Ok(st)
    }
}

impl Drop for GuestConn {
    fn drop(&mut self) {
        self.release();
    }
}

fn stream_error(e: StreamError) -> ConnError {
    match e {
        StreamError::Closed(r) => ConnError::Closed(r),
        StreamError::BrokenPipe => ConnError::BrokenPipe,
        StreamError::UnknownConnection => ConnError::Released,
        other => ConnError::Stopped(format!("unexpected stream error: {other}")),
    }
}
