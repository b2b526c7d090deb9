//! A guest's console log (KubeVirt's guest-console-log): what a real guest wrote to its serial
//! port, through `/converge/v1/…/consolelog` and `converge console --log`, cut with `tailLines`,
//! readable by `view` in its namespace and by no one outside it.

mod common;

use common::guests::{kernel_vm, spawn_guest_app, within, GUEST_MARKER};
use common::*;
use serde_json::json;
use std::time::Duration;

const LOG: &str = "/converge/v1/namespaces/default/virtualmachineinstances/talker/consolelog";

#[tokio::test(flavor = "multi_thread")]
async fn a_guests_console_log_is_read_by_its_namespace_only() {
    within(Duration::from_secs(240), async {
        let g = spawn_guest_app().await;
        let app = &g.app;
        assert_eq!(app.post(VMS, &kernel_vm("talker", "Always")).await.0, 201);
        let logged = wait_until(Duration::from_secs(120), || async {
            app.get(LOG).await.1.as_str().is_some_and(|t| t.contains(GUEST_MARKER))
        })
        .await;
        assert!(logged, "the boot reached the console log: {:?}", app.get(LOG).await);
        // The last line alone, as kubectl logs --tail=1 cuts it.
        let (code, last) = app.get(&format!("{LOG}?tailLines=1")).await;
        let last = last.as_str().unwrap_or_default().to_string();
        assert_eq!(code, 200);
        assert!(last.trim_end().lines().count() <= 1, "{last:?}");
        let (code, body) = app.get(&format!("{LOG}?tailLines=many")).await;
        assert_eq!(code, 400, "{body}");
        // The CLI prints the same.
        let (ok, out, err) = g.converge(&["console", "--log", "talker"], None).await;
        assert!(ok && out.contains(GUEST_MARKER), "{out}{err}");
        let (ok, out, err) = g.converge(&["console", "--log", "--tail", "3", "talker"], None).await;
        assert!(ok && out.trim_end().lines().count() <= 3, "{out}{err}");
        // view in the namespace reads it; another namespace's admin does not; a missing VMI is a 404.
        let token = |body: serde_json::Value| async move {
            let (code, record) = app.post("/converge/v1/tokens", &body).await;
            assert_eq!(code, 201, "{record}");
            record["token"].as_str().expect("token").to_string()
        };
        let read = |token: String, path: String| async move {
            let response = app.http.get(app.url(&path)).bearer_auth(token).send().await.expect("get");
            response.status().as_u16()
        };
        let viewer = token(json!({"role": "view", "namespaces": ["default"], "ttlSeconds": 600})).await;
        assert_eq!(read(viewer, LOG.to_string()).await, 200);
        let stranger = token(json!({"role": "admin", "namespaces": ["team-b"], "ttlSeconds": 600})).await;
        assert_eq!(read(stranger, LOG.to_string()).await, 403);
        let missing = LOG.replace("talker", "nobody");
        assert_eq!(app.get(&missing).await.0, 404);
    })
    .await;
}
