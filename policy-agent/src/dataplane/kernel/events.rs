//! Reading verdict events from the ring buffer.

use std::{
    os::fd::{AsFd, AsRawFd},
    path::Path,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use policy_common::{maps as names, VerdictEvent};

use super::{kernel_error, pins::PinPaths, DataplaneError};

/// Reads [`VerdictEvent`]s the programs send. Either taken from a running
/// [`super::KernelDataplane`] (`take_event_reader`) or opened from the pin
/// folder by another process ([`EventReader::open`]). Several readers of one
/// ring buffer share (not duplicate) the events.
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl EventReader {
    pub(super) fn new(ring: RingBuf<MapData>) -> Self {
        Self { ring }
    }

    /// Opens the pinned ring buffer of the dataplane whose base pin folder
    /// is `base` (what `KernelOptions::pin_dir` was).
    pub fn open(base: impl AsRef<Path>) -> Result<Self, DataplaneError> {
        let path = PinPaths::new(base.as_ref()).map(names::EVENTS);
        let data = MapData::from_pin(&path)
            .map_err(|e| kernel_error(format!("opening {}", path.display()), e))?;
        let ring = RingBuf::try_from(aya::maps::Map::RingBuf(data))
            .map_err(|e| kernel_error(format!("opening {}", path.display()), e))?;
        Ok(Self { ring })
    }

    /// Returns the next event already in the buffer, without waiting.
    pub fn try_next(&mut self) -> Option<VerdictEvent> {
        let item = self.ring.next()?;
        parse_event(&item)
    }

    /// Waits up to `timeout` for events and returns all that are ready
    /// (empty on timeout).
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<VerdictEvent>, DataplaneError> {
        let mut out = self.drain();
        if !out.is_empty() {
            return Ok(out);
        }
        let mut pfd = libc::pollfd {
            fd: self.ring.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(kernel_error("polling the event ring buffer", err));
            }
        }
        out.extend(self.drain());
        Ok(out)
    }

    fn drain(&mut self) -> Vec<VerdictEvent> {
        let mut out = Vec::new();
        while let Some(ev) = self.try_next() {
            out.push(ev);
        }
        out
    }
}

impl AsRawFd for EventReader {
    /// The ring buffer's fd, readable when events are pending (for
    /// `tokio::io::unix::AsyncFd` or an event loop).
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

fn parse_event(bytes: &[u8]) -> Option<VerdictEvent> {
    if bytes.len() < std::mem::size_of::<VerdictEvent>() {
        return None;
    }
    // SAFETY: VerdictEvent is plain old data (repr(C), integers and byte
    // arrays) and the slice holds at least that many bytes; the read is
    // unaligned-safe.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<VerdictEvent>()) })
}
