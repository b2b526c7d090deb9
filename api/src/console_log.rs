//! `GET /converge/v1/namespaces/{ns}/virtualmachineinstances/{name}/consolelog`: a guest's
//! serial console output so far, as KubeVirt's `guest-console-log` container gives it to
//! `kubectl logs`. Readable with the `view` role in the VMI's namespace; `tailLines` and
//! `limitBytes` cut it as they cut a pod's log. The node that runs the guest keeps the log
//! (`node::console_log`); the API reads it there, in process or through the node's link.

use crate::nodes::link::NodeTarget;
use crate::response::status_response;
use crate::state::AppState;
use crate::subresources::vmi_to_read;
use actix_web::{web, HttpRequest, HttpResponse};
use converge_engine::error::{ApiError, ApiResult};
use converge_engine::meta;
use converge_engine::node::console_log::Window;
use converge_engine::node::NodeAgent;

/// Reads `tailLines` and `limitBytes`; anything else in the query is the caller's (`uid`).
pub fn parse_window(query: &str) -> ApiResult<Window> {
    let mut window = Window::default();
    for (key, value) in query.split('&').filter_map(|p| p.split_once('=')) {
        let number = || {
            value.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("{key}: Invalid value: \"{value}\": must be a non-negative integer"))
            })
        };
        match key {
            "tailLines" => window.tail_lines = Some(number()?),
            "limitBytes" => window.limit_bytes = Some(number()?.max(1)),
            _ => {}
        }
    }
    Ok(window)
}

fn query_of(window: Window) -> String {
    let mut q = String::new();
    if let Some(n) = window.tail_lines {
        q.push_str(&format!("&tailLines={n}"));
    }
    if let Some(n) = window.limit_bytes {
        q.push_str(&format!("&limitBytes={n}"));
    }
    q
}

fn text(bytes: Vec<u8>) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; charset=utf-8").body(String::from_utf8_lossy(&bytes).into_owned())
}

/// The API's handler.
pub async fn console_log(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let result: ApiResult<HttpResponse> = async {
        let window = parse_window(req.query_string())?;
        let (vmi, node) = vmi_to_read(&req, &state, "virtualmachineinstances/consolelog").await?;
        match node {
            NodeTarget::Local(node) => Ok(text(read_local(&node, meta::uid(&vmi), window).await?)),
            NodeTarget::Remote(remote) => {
                let path = format!(
                    "/v1/namespaces/{}/virtualmachineinstances/{}/consolelog?uid={}{}",
                    meta::namespace(&vmi),
                    meta::name(&vmi),
                    meta::uid(&vmi),
                    query_of(window)
                );
                let body = state.node_link.call(&remote, reqwest::Method::GET, &path).await?;
                Ok(text(body.into_bytes()))
            }
        }
    }
    .await;
    result.unwrap_or_else(|e| status_response(&e))
}

async fn read_local(node: &NodeAgent, uid: &str, window: Window) -> ApiResult<Vec<u8>> {
    // The uid names a directory: only a UUID may.
    let uid = uuid::Uuid::parse_str(uid).map_err(|_| ApiError::internal("the VMI's uid is not a UUID"))?.to_string();
    node.console_log(&uid, window).await.map_err(|e| ApiError::internal(format!("reading the console log: {e}")))
}

/// The node server's handler: the same names and uid checks as its other VMI calls.
pub async fn on_node(req: HttpRequest, agent: web::Data<NodeAgent>) -> HttpResponse {
    let result: ApiResult<HttpResponse> = async {
        let t = crate::nodes::server::read_target(&req)?;
        let window = parse_window(req.query_string())?;
        Ok(text(read_local(&agent, &t.uid, window).await?))
    }
    .await;
    result.unwrap_or_else(|e| status_response(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_read_from_the_query_and_bad_numbers_refused() {
        assert_eq!(parse_window("").expect("empty"), Window::default());
        let w = parse_window("uid=x&tailLines=20&limitBytes=4096").expect("window");
        assert_eq!((w.tail_lines, w.limit_bytes), (Some(20), Some(4096)));
        assert_eq!(parse_window("limitBytes=0").expect("zero").limit_bytes, Some(1));
        for bad in ["tailLines=-1", "limitBytes=lots", "tailLines=99999999999999999999999"] {
            let e = parse_window(bad).expect_err(bad);
            assert_eq!(e.code, 400, "{bad}");
        }
        assert_eq!(query_of(w), "&tailLines=20&limitBytes=4096");
    }
}
