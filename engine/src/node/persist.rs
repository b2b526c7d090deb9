//! Making started domains persistent once the node is quiet. A domain starts transient
//! (`virDomainCreateXML`, one call, the fastest way to Running) and is defined afterwards, so
//! that its definition outlives QEMU and a restart of Converge. A define costs libvirtd CPU
//! that the starts in flight need: at 50 VMIs 100 ms apart, defining each domain right after
//! its start made P1's median 3.07 s against 2.66 s with none (four runs each, alternated), so
//! the defines wait until no start is in flight — or `MAX_WAIT`, should starts never pause.
//! While a domain is transient its stop is still read right: `Hypervisor::state_by_uuid`
//! keeps the reason from the stop event.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::Shared;

/// How long a domain stays transient at most while starts keep coming.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting define looks whether the starts are over.
const QUIET_POLL: Duration = Duration::from_millis(50);

/// What to define: the XML a domain was started with (and its UUID, to define only that
/// domain), or `None` for a transient domain of ours a resync came across, read when its turn comes.
struct Waiting {
    domain: String,
    started: Option<(String, String)>,
    since: Instant,
}

/// Domains waiting to be made persistent, oldest first.
#[derive(Default)]
pub struct PendingPersist {
    waiting: Mutex<Vec<Waiting>>,
    added: Notify,
}

impl PendingPersist {
    /// A domain just started from `xml`, with this UUID.
    pub fn started(&self, domain: &str, uuid: &str, xml: String) {
        self.add(Waiting { domain: domain.into(), started: Some((uuid.into(), xml)), since: Instant::now() });
    }

    /// A transient domain of this node found running (its start's define failed, or the
    /// process died before it came).
    pub fn found(&self, domain: &str) {
        self.add(Waiting { domain: domain.into(), started: None, since: Instant::now() });
    }

    fn add(&self, w: Waiting) {
        let Ok(mut waiting) = self.waiting.lock() else { return };
        match waiting.iter_mut().find(|o| o.domain == w.domain) {
            // Started again (a new UUID): the newer start is the one to define.
            Some(old) if w.started.is_some() => *old = w,
            Some(_) => return,
            None => waiting.push(w),
        }
        drop(waiting);
        self.added.notify_one();
    }

    fn oldest_since(&self) -> Option<Instant> {
        self.waiting.lock().ok()?.first().map(|w| w.since)
    }

    fn take_oldest(&self) -> Option<Waiting> {
        let mut waiting = self.waiting.lock().ok()?;
        (!waiting.is_empty()).then(|| waiting.remove(0))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.waiting.lock().map(|w| w.len()).unwrap_or(0)
    }
}

fn starts_in_flight(s: &Shared) -> bool {
    s.start_slots.available_permits() < super::agent::START_SLOTS
}

/// Defines the waiting domains one at a time, each once no start is in flight.
pub(super) async fn run(s: Arc<Shared>) {
    loop {
        s.pending_persist.added.notified().await;
        while let Some(w) = next_when_quiet(&s).await {
            persist(&s, w).await;
        }
    }
}

async fn next_when_quiet(s: &Shared) -> Option<Waiting> {
    loop {
        let since = s.pending_persist.oldest_since()?;
        if !starts_in_flight(s) || since.elapsed() >= MAX_WAIT {
            return s.pending_persist.take_oldest();
        }
        tokio::time::sleep(QUIET_POLL).await;
    }
}

async fn persist(s: &Shared, w: Waiting) {
    let hv = Arc::clone(&s.hv);
    let domain = w.domain.clone();
    let done = tokio::task::spawn_blocking(move || {
        crate::failpoint::hit(crate::failpoint::NODE_BEFORE_PERSIST);
        let xml = match w.started {
            // Only the domain that was started, and only while it runs: a stopped transient
            // domain is gone, and defining it would bring back what its VMI's end removed.
            Some((uuid, xml)) => match hv.state_by_uuid(&uuid, &w.domain)? {
                Some(state) if state.is_active() => xml,
                _ => return Ok(false),
            },
            None => hv.xml(&w.domain)?,
        };
        hv.persist(&xml).map(|()| true)
    })
    .await;
    match done {
        Ok(Ok(true)) => tracing::debug!(%domain, "made persistent"),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => {
            tracing::warn!(%domain, error = %e, "a started domain was not made persistent; the resync retries")
        }
        Err(e) => tracing::warn!(%domain, error = %e, "a started domain was not made persistent; the resync retries"),
    }
}
