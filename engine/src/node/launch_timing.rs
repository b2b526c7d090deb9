//! Where a guest's start goes, phase by phase: one `converge::launch` debug event per start
//! (the launch benchmark reads them; `RUST_LOG=converge::launch=debug` shows them).

use std::time::{Duration, Instant};

/// Phases of one start, in the order the node agent runs them.
#[derive(Debug, Default)]
pub struct LaunchTimer {
    last: Option<Instant>,
    /// Reading the VMI and looking for a domain of its name.
    pub lookup: Duration,
    /// Cloud-init Secrets, images and claims: what the disks are made from.
    pub inputs: Duration,
    /// Overlays, blank images, cloud-init ISOs.
    pub disks: Duration,
    /// The pod network's tap, address and rules.
    pub network: Duration,
    /// The domain XML.
    pub build: Duration,
    /// Waiting for one of the node's start slots (`START_SLOTS`).
    pub slot: Duration,
    /// libvirt's start of the (transient) domain, as the driver timed it.
    pub start: Duration,
    /// After libvirt's start: the pod network's last step and the Running status stored.
    pub status: Duration,
}

impl LaunchTimer {
    pub fn start() -> LaunchTimer {
        LaunchTimer { last: Some(Instant::now()), ..LaunchTimer::default() }
    }

    /// The time since the previous lap (or the start).
    pub fn lap(&mut self) -> Duration {
        let now = Instant::now();
        let since = self.last.map(|l| now - l).unwrap_or_default();
        self.last = Some(now);
        since
    }

    pub fn report(&self, namespace: &str, name: &str) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        tracing::debug!(
            target: "converge::launch",
            namespace,
            name,
            lookup_ms = ms(self.lookup),
            inputs_ms = ms(self.inputs),
            disks_ms = ms(self.disks),
            network_ms = ms(self.network),
            build_ms = ms(self.build),
            slot_ms = ms(self.slot),
            start_ms = ms(self.start),
            status_ms = ms(self.status),
            "guest started"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laps_add_up_to_the_time_since_the_start() {
        let mut t = LaunchTimer::start();
        let begun = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        let a = t.lap();
        let b = t.lap();
        assert!(a >= Duration::from_millis(2));
        assert!(a + b <= begun.elapsed() + Duration::from_millis(1));
    }
}
