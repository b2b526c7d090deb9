//! `?watch=true`: a chunked stream of JSON watch events, one per line, ended by `timeoutSeconds`.

use crate::request::{Query, ResourcePath};
use crate::state::AppState;
use crate::table;
use actix_web::HttpResponse;
use bytes::Bytes;
use converge_engine::store::{WatchFilter, WatchItem};
use converge_engine::{ApiError, ApiResult};
use serde_json::{json, Value};
use std::time::Duration;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

fn line(event_type: &str, object: &str) -> Bytes {
    Bytes::from(format!("{{\"type\":\"{event_type}\",\"object\":{object}}}\n"))
}

pub async fn serve(state: &AppState, path: &ResourcePath, q: &Query, as_table: bool) -> ApiResult<HttpResponse> {
    let kind = path.kind;
    let opts = q.list_options(kind)?;
    let from = match q.resource_version.as_deref() {
        None | Some("0") => None,
        Some(rv) => Some(rv.parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!("resourceVersion: Invalid value: \"{rv}\": must be an integer"))
        })?),
    };
    let filter = WatchFilter { namespace: path.namespace.clone(), labels: opts.labels, fields: opts.fields };
    let bookmarks = q.allow_bookmarks.then_some(state.bookmark_interval);
    let rx = match state.store.watch(kind, filter, from, bookmarks).await {
        Ok(rx) => rx,
        // The apiserver answers a too-old resourceVersion inside the stream, not with a 410.
        Err(e) if e.code == 410 => {
            let body = line("ERROR", &e.to_status().to_string());
            return Ok(HttpResponse::Ok().content_type("application/json").body(body));
        }
        Err(e) => return Err(e),
    };
    let timeout = q.timeout_seconds.map(Duration::from_secs).unwrap_or(DEFAULT_TIMEOUT);
    let deadline = tokio::time::Instant::now() + timeout;
    let include = q.include_object;
    let alias = path.alias;
    let held = crate::metrics::requests::LongRunning::start(&crate::metrics::requests::RequestLabels {
        verb: "WATCH",
        group: kind.group,
        version: kind.version,
        resource: kind.plural,
        subresource: "",
        scope: if path.namespace.is_some() { "namespace" } else { "cluster" },
    });
    let stream = futures::stream::unfold((rx, held), move |(mut rx, held)| async move {
        let item = tokio::select! {
            item = rx.recv() => item?,
            _ = tokio::time::sleep_until(deadline) => return None,
        };
        let bytes = match item {
            WatchItem::Event(t, obj, raw) => {
                if as_table {
                    let t_obj = table::table(
                        kind,
                        std::slice::from_ref(&*obj),
                        json!({"resourceVersion": obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null)}),
                        include,
                    );
                    line(t.as_str(), &t_obj.to_string())
                } else {
                    line(t.as_str(), &crate::request::present_raw(alias, &raw))
                }
            }
            WatchItem::Bookmark(rv) => {
                let obj = json!({"kind": kind.kind, "apiVersion": alias.map_or_else(|| kind.api_version(), |a| a.api_version()), "metadata": {"resourceVersion": rv.to_string()}});
                line("BOOKMARK", &obj.to_string())
            }
        };
        Some((Ok::<Bytes, actix_web::Error>(bytes), (rx, held)))
    });
    Ok(HttpResponse::Ok().content_type("application/json").streaming(stream))
}
