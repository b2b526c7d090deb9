//! A work queue with client-go's guarantees: a key is queued at most once, never handed to two
//! workers at the same time, and a key added while it is being worked on runs again afterwards.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter, IntGauge};

use tokio::sync::Notify;

struct State<K> {
    queue: VecDeque<K>,
    dirty: HashSet<K>,
    processing: HashSet<K>,
    /// When each queued key was queued, and when each key being worked on was handed out.
    queued_at: HashMap<K, Instant>,
    started_at: HashMap<K, Instant>,
}

/// client-go's work-queue metrics of one named queue.
struct QueueMetrics {
    depth: IntGauge,
    adds: IntCounter,
    retries: IntCounter,
    queue_duration: Histogram,
    work_duration: Histogram,
}

pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    ready: Notify,
    /// Set once the queue has a name (`worker::spawn` gives it its controller's).
    metrics: OnceLock<QueueMetrics>,
}

impl<K: Clone + Eq + Hash> State<K> {
    fn enqueue(&mut self, key: K) {
        self.queued_at.insert(key.clone(), Instant::now());
        self.queue.push_back(key);
    }
}

impl<K: Clone + Eq + Hash + Send + 'static> WorkQueue<K> {
    pub fn new() -> Arc<Self> {
        Arc::new(WorkQueue {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                queued_at: HashMap::new(),
                started_at: HashMap::new(),
            }),
            ready: Notify::new(),
            metrics: OnceLock::new(),
        })
    }

    /// Names the queue in the `kubevirt_workqueue_*` metrics (the first name given stays).
    pub fn name(&self, name: &str) {
        let m = crate::metrics::WORKQUEUE_DEPTH.with_label_values(&[name]);
        let _ = self.metrics.set(QueueMetrics {
            depth: m,
            adds: crate::metrics::WORKQUEUE_ADDS.with_label_values(&[name]),
            retries: crate::metrics::WORKQUEUE_RETRIES.with_label_values(&[name]),
            queue_duration: crate::metrics::WORKQUEUE_QUEUE_DURATION.with_label_values(&[name]),
            work_duration: crate::metrics::WORKQUEUE_WORK_DURATION.with_label_values(&[name]),
        });
    }

    /// Counts a key coming back after a failure.
    pub fn retried(&self) {
        if let Some(m) = self.metrics.get() {
            m.retries.inc();
        }
    }

    fn set_depth(&self, s: &State<K>) {
        if let Some(m) = self.metrics.get() {
            m.depth.set(s.queue.len() as i64);
        }
    }

    pub fn add(&self, key: K) {
        let Ok(mut s) = self.state.lock() else { return };
        if let Some(m) = self.metrics.get() {
            m.adds.inc();
        }
        if !s.dirty.insert(key.clone()) {
            return;
        }
        if !s.processing.contains(&key) {
            s.enqueue(key);
            self.set_depth(&s);
            drop(s);
            self.ready.notify_one();
        }
    }

    pub fn add_after(self: &Arc<Self>, key: K, delay: Duration) {
        let queue = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(key);
        });
    }

    /// Waits for the next key; the caller must call `done` with it.
    pub async fn next(&self) -> K {
        loop {
            let notified = self.ready.notified();
            if let Ok(mut s) = self.state.lock() {
                if let Some(key) = s.queue.pop_front() {
                    s.dirty.remove(&key);
                    s.processing.insert(key.clone());
                    let now = Instant::now();
                    if let (Some(m), Some(at)) = (self.metrics.get(), s.queued_at.remove(&key)) {
                        m.queue_duration.observe(now.duration_since(at).as_secs_f64());
                    }
                    s.started_at.insert(key.clone(), now);
                    self.set_depth(&s);
                    if !s.queue.is_empty() {
                        self.ready.notify_one();
                    }
                    return key;
                }
            }
            notified.await;
        }
    }

    pub fn done(&self, key: &K) {
        let Ok(mut s) = self.state.lock() else { return };
        s.processing.remove(key);
        if let (Some(m), Some(at)) = (self.metrics.get(), s.started_at.remove(key)) {
            m.work_duration.observe(at.elapsed().as_secs_f64());
        }
        if s.dirty.contains(key) {
            s.enqueue(key.clone());
            self.set_depth(&s);
            drop(s);
            self.ready.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.state.lock().map(|s| s.queue.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_dedupe_and_requeue_after_done() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let first = q.next().await;
        assert_eq!(first, "a");
        q.add("a"); // while processing: not handed out again yet
        assert_eq!(q.next().await, "b");
        assert!(q.is_empty());
        q.done(&"a");
        assert_eq!(q.next().await, "a");
    }
}
