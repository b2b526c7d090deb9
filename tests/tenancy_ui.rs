//! The hostile-tenant suite, web console part: `/ui/` is served without a token, so it must be
//! a door to nothing else. (The browser test, tests/ui.rs, makes the other attack: markup in an
//! Event's message, which the console must show as text.)

mod common;

use common::*;
use serde_json::json;

/// curl with the path sent as written (`--path-as-is`): reqwest, as browsers do, folds `..`
/// before it sends, which would hide what the server does with it.
async fn raw(app: &TestApp, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let ca = app.dir.path().join("ui-test-ca.pem");
    let ca_pem = app.server.as_ref().expect("a running server").ca_pem.clone();
    std::fs::write(&ca, ca_pem).expect("write the CA");
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "--path-as-is", "--cacert"]).arg(&ca).args(["-X", method, "-o", "-", "-w", "\n%{http_code}"]);
    cmd.args(["-H", "Content-Type: application/json", "--data", r#"{"metadata":{"name":"made-through-ui"}}"#]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.arg(format!("{}{path}", app.base_url)).output().await.expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Attack: reach the API through the console's public prefix — a dot-dot path, an encoded one,
/// every method — without a token. Nothing but the console's own files answers, and nothing is
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consoles_public_prefix_leads_nowhere_else() {
    let app = spawn_app().await;
    let (s, body) = app.post("/api/v1/namespaces", &json!({"metadata": {"name": "hidden-team"}})).await;
    assert_eq!(s, 201, "{body}");
    let (code, page) = raw(&app, "GET", "/ui/", None).await;
    assert_eq!(code, 200);
    assert!(page.contains("/ui/assets/app.js") && !page.contains("hidden-team"), "the page holds no data: {page}");
    for path in [
        "/ui/../api/v1/namespaces",
        "/ui/%2e%2e/api/v1/namespaces",
        "/ui/..%2Fapi%2Fv1%2Fnamespaces",
        "/ui/assets/../../api/v1/namespaces",
        "/ui/../converge/v1/tokens",
        "/ui//api/v1/namespaces",
    ] {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let (code, body) = raw(&app, method, path, None).await;
            assert!(
                matches!(code, 401 | 404 | 405),
                "{method} {path} without a token answered {code}: {}",
                &body[..body.len().min(300)]
            );
            assert!(!body.contains("hidden-team"), "{method} {path} leaked a namespace: {body}");
        }
    }
    let (s, _) = app.get("/api/v1/namespaces/made-through-ui").await;
    assert_eq!(s, 404, "nothing was created through the console's prefix");
    // Outside the prefix, a look-alike is not public.
    let (code, _) = raw(&app, "GET", "/uix/../api/v1/namespaces", None).await;
    assert!(matches!(code, 401 | 404), "{code}");
    let (code, _) = raw(&app, "GET", "/api/v1/namespaces", None).await;
    assert_eq!(code, 401);
    let (s, _) = app.get("/readyz").await;
    assert_eq!(s, 200);
}

/// The console may not be framed (clickjacking) and runs only its own scripts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_not_frameable_and_runs_only_its_own_scripts() {
    let app = spawn_app().await;
    let resp = app.http.get(app.url("/ui/")).send().await.expect("GET /ui/");
    assert_eq!(resp.status(), 200);
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let csp = header("content-security-policy");
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self';"), "{csp}");
    assert!(
        !csp.contains("unsafe-eval")
            && !csp.split(';').any(|d| d.contains("script-src") && d.contains("unsafe-inline"))
    );
    assert_eq!(header("x-frame-options"), "DENY");
    assert_eq!(header("x-content-type-options"), "nosniff");
}
