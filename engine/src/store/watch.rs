//! Watches: the log from a resourceVersion, then the live broadcast, de-duplicated by
//! resourceVersion so that a resume neither misses nor repeats an event.

use super::{sql, ListOptions, Store};
use crate::error::{ApiError, ApiResult};
use crate::kinds::ResourceKind;
use crate::meta;
use crate::selector::{FieldSelector, LabelSelector};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEventType {
    Added,
    Modified,
    Deleted,
}

impl WatchEventType {
    pub fn as_str(&self) -> &'static str {
        match self {
            WatchEventType::Added => "ADDED",
            WatchEventType::Modified => "MODIFIED",
            WatchEventType::Deleted => "DELETED",
        }
    }
    pub fn parse(s: &str) -> Self {
        match s {
            "ADDED" => WatchEventType::Added,
            "DELETED" => WatchEventType::Deleted,
            _ => WatchEventType::Modified,
        }
    }
}

/// One committed change, as stored in the log and broadcast.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub rv: i64,
    pub kind_key: String,
    pub namespace: String,
    pub name: String,
    pub event_type: WatchEventType,
    pub object: Arc<Value>,
    pub raw: Arc<str>,
    /// Labels before a MODIFIED, so selector watches can turn it into ADDED or DELETED.
    pub prev_labels: Option<Map<String, Value>>,
}

/// What a watcher receives.
#[derive(Debug, Clone)]
pub enum WatchItem {
    Event(WatchEventType, Arc<Value>, Arc<str>),
    Bookmark(i64),
}

#[derive(Debug, Clone, Default)]
pub struct WatchFilter {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl WatchFilter {
    fn matches_now(&self, obj: &Value) -> bool {
        self.labels.matches(&meta::labels(obj)) && self.fields.matches(obj)
    }

    /// How a change looks through this filter (a selector can turn MODIFIED into ADDED/DELETED).
    pub fn translate(&self, ev: &WatchEvent) -> Option<WatchEventType> {
        if let Some(ns) = &self.namespace {
            if &ev.namespace != ns {
                return None;
            }
        }
        let now = self.matches_now(&ev.object);
        match ev.event_type {
            WatchEventType::Added | WatchEventType::Deleted => now.then_some(ev.event_type),
            WatchEventType::Modified => {
                let before = match &ev.prev_labels {
                    Some(prev) => self.labels.matches(prev) && self.fields.matches(&ev.object),
                    None => now,
                };
                match (before, now) {
                    (true, true) => Some(WatchEventType::Modified),
                    (false, true) => Some(WatchEventType::Added),
                    (true, false) => Some(WatchEventType::Deleted),
                    (false, false) => None,
                }
            }
        }
    }
}

const WATCH_BUFFER: usize = 256;

impl Store {
    /// Watch `kind` from `from` (None: the current state as ADDED events first). A resume point
    /// older than the log answers 410 Expired.
    pub async fn watch(
        self: &Arc<Self>,
        kind: &'static ResourceKind,
        filter: WatchFilter,
        from: Option<i64>,
        bookmark_every: Option<Duration>,
    ) -> ApiResult<mpsc::Receiver<WatchItem>> {
        let key = kind.store_key();
        let rx = self.subscribe();
        let (backlog, start) = match from {
            None => {
                let opts =
                    ListOptions { labels: filter.labels.clone(), fields: filter.fields.clone(), ..Default::default() };
                let page = self.list(kind, filter.namespace.as_deref(), &opts).await?;
                let mut items = Vec::with_capacity(page.items.len());
                for raw in page.items {
                    let obj: Value = serde_json::from_str(&raw).map_err(|e| ApiError::internal(e.to_string()))?;
                    items.push(WatchItem::Event(WatchEventType::Added, Arc::new(obj), Arc::from(raw)));
                }
                (items, page.resource_version)
            }
            Some(rv) => {
                let mut conn = self.pool.acquire().await?;
                let compacted = sql::meta_value(&mut conn, "compacted_rv").await?;
                if rv < compacted {
                    return Err(ApiError::gone(format!("too old resource version: {rv} ({compacted})")));
                }
                let events = sql::events_since(&mut conn, &key, rv).await?;
                let mut last = rv;
                let mut items = vec![];
                for ev in events {
                    last = ev.rv;
                    if let Some(t) = filter.translate(&ev) {
                        items.push(WatchItem::Event(t, ev.object.clone(), ev.raw.clone()));
                    }
                }
                (items, last)
            }
        };
        let (tx, out) = mpsc::channel(WATCH_BUFFER);
        let store = Arc::clone(self);
        tokio::spawn(async move {
            for item in backlog {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
            store.follow(key, filter, start, rx, tx, bookmark_every).await;
        });
        Ok(out)
    }

    /// The log's events of `key` after `last`. Many watches fall behind at once under a burst
    /// of writes and all come here together, so a read that fails (the pool's connections all
    /// taken) is tried again before the watch gives up and ends, leaving its client to re-watch.
    async fn catch_up(&self, key: &str, last: i64) -> Option<Vec<WatchEvent>> {
        let mut pause = Duration::from_millis(50);
        for attempt in 1..=6 {
            let read = async {
                let mut conn = self.pool.acquire().await?;
                sql::events_since(&mut conn, key, last).await
            }
            .await;
            match read {
                Ok(events) => return Some(events),
                Err(e) if attempt < 6 => {
                    tracing::debug!(error = %e, attempt, "a watch could not catch up from the log; trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => tracing::warn!(error = %e, "a watch could not catch up from the log; it ends"),
            }
        }
        None
    }

    async fn follow(
        &self,
        key: String,
        filter: WatchFilter,
        mut last: i64,
        mut rx: broadcast::Receiver<Arc<WatchEvent>>,
        tx: mpsc::Sender<WatchItem>,
        bookmark_every: Option<Duration>,
    ) {
        let mut ticker = tokio::time::interval(bookmark_every.unwrap_or(Duration::from_secs(3600)));
        ticker.tick().await;
        loop {
            tokio::select! {
                received = rx.recv() => match received {
                    Ok(ev) => {
                        if ev.rv <= last {
                            continue;
                        }
                        last = ev.rv;
                        if ev.kind_key != key {
                            continue;
                        }
                        if let Some(t) = filter.translate(&ev) {
                            if tx.send(WatchItem::Event(t, ev.object.clone(), ev.raw.clone())).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind the broadcast: catch up from the log, then listen again.
                        rx = self.subscribe();
                        let Some(events) = self.catch_up(&key, last).await else { return };
                        for ev in events {
                            last = last.max(ev.rv);
                            if let Some(t) = filter.translate(&ev) {
                                if tx.send(WatchItem::Event(t, ev.object.clone(), ev.raw.clone())).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticker.tick(), if bookmark_every.is_some() => {
                    if tx.send(WatchItem::Bookmark(last)).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(t: WatchEventType, labels: Value, prev: Option<Value>) -> WatchEvent {
        let obj = json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}});
        WatchEvent {
            rv: 1,
            kind_key: "k".into(),
            namespace: "ns".into(),
            name: "a".into(),
            event_type: t,
            raw: Arc::from(obj.to_string()),
            object: Arc::new(obj),
            prev_labels: prev.and_then(|p| p.as_object().cloned()),
        }
    }

    #[test]
    fn selectors_turn_modifications_into_adds_and_deletes() {
        let filter = WatchFilter { labels: LabelSelector::parse("app=web").unwrap_or_default(), ..Default::default() };
        use WatchEventType::*;
        let cases = [
            (Modified, json!({"app": "web"}), Some(json!({"app": "web"})), Some(Modified)),
            (Modified, json!({"app": "web"}), Some(json!({})), Some(Added)),
            (Modified, json!({}), Some(json!({"app": "web"})), Some(Deleted)),
            (Modified, json!({}), Some(json!({})), None),
            (Added, json!({"app": "web"}), None, Some(Added)),
            (Deleted, json!({}), None, None),
        ];
        for (t, labels, prev, want) in cases {
            assert_eq!(filter.translate(&event(t, labels, prev)), want);
        }
        let other_ns = WatchFilter { namespace: Some("x".into()), ..Default::default() };
        assert_eq!(other_ns.translate(&event(Added, json!({}), None)), None);
    }
}
