//! Accepting connections without ever giving up: a failed `accept`
//! (`EMFILE` when the process is out of descriptors, `ENFILE`, `ENOMEM`,
//! a connection aborted before it was taken) is logged and retried after
//! a pause that grows while it keeps failing, instead of ending the
//! server. Both the CNI socket and the health endpoint use it.

use std::time::Duration;

/// First pause after a failed accept.
pub const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between retries.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The pause before the next accept, and how many failed in a row.
#[derive(Debug)]
pub struct AcceptBackoff {
    server: &'static str,
    next: Duration,
    failures: u64,
}

impl AcceptBackoff {
    /// A fresh backoff for the server named `server` (in logs and
    /// `palisade_accept_errors_total`).
    pub fn new(server: &'static str) -> Self {
        Self {
            server,
            next: BACKOFF_MIN,
            failures: 0,
        }
    }

    /// An accept succeeded: the next failure pauses [`BACKOFF_MIN`] again.
    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                server = self.server,
                failures = self.failures,
                "accepting connections again"
            );
        }
        self.next = BACKOFF_MIN;
        self.failures = 0;
    }

    /// An accept failed: counts and logs it (the first of a run, then
    /// every hundredth), then pauses.
    pub async fn failed(&mut self, error: &std::io::Error) {
        self.failures += 1;
        crate::health::metrics().accept_error(self.server);
        if self.failures == 1 || self.failures.is_multiple_of(100) {
            tracing::error!(server = self.server, %error, failures = self.failures, retry_in = ?self.next, "accepting a connection failed; retrying");
        }
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(BACKOFF_MAX);
    }
}
