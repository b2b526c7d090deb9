//! Bearer tokens on every protected route, in the Authorization header and in the websocket
//! subprotocol form that browsers and Foreman's VNC console use.

mod common;

use base64::Engine;
use common::*;
use converge_api::auth::{Authenticator, Role};
use reqwest::Method;
use serde_json::{json, Value};

/// Every protected route with a request that succeeds for an admin.
fn protected_routes() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (Method::GET, "/api", None),
        (Method::GET, "/api/v1", None),
        (Method::GET, "/apis", None),
        (Method::GET, "/apis/kubevirt.io", None),
        (Method::GET, "/apis/kubevirt.io/v1", None),
        (Method::GET, "/openapi/v2", None),
        (Method::GET, "/openapi/v3", None),
        (Method::GET, "/openapi/v3/apis/kubevirt.io/v1", None),
        (Method::GET, "/openapi.json", None),
        (Method::GET, "/api/v1/namespaces", None),
        (Method::GET, "/api/v1/namespaces/default", None),
        (Method::GET, "/api/v1/namespaces/default/configmaps", None),
        (Method::GET, VMS, None),
        (Method::GET, "/apis/kubevirt.io/v1/virtualmachines", None),
        (Method::GET, "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/probe", None),
        (Method::GET, "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/probe/status", None),
        (
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            Some(json!({"metadata": {"generateName": "m-"}, "data": {}})),
        ),
        (
            Method::PATCH,
            "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/probe",
            Some(json!({"metadata": {"labels": {"p": "1"}}})),
        ),
        (Method::GET, "/converge/v1/tokens", None),
    ]
}

#[derive(Clone, Copy, Debug)]
enum Carrier {
    Header,
    WebsocketUrl,
    WebsocketStdPadded,
}

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    body: &Option<Value>,
    token: Option<&str>,
    carrier: Carrier,
) -> u16 {
    let mut req = app.http.request(method.clone(), app.url(path));
    if let Some(t) = token {
        req = match carrier {
            Carrier::Header => req.bearer_auth(t),
            Carrier::WebsocketUrl => req.header(
                "Sec-WebSocket-Protocol",
                format!(
                    "base64.binary.k8s.io, base64url.bearer.authorization.k8s.io.{}",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t)
                ),
            ),
            Carrier::WebsocketStdPadded => req.header(
                "Sec-WebSocket-Protocol",
                format!(
                    "base64url.bearer.authorization.k8s.io.{}",
                    base64::engine::general_purpose::STANDARD.encode(t)
                ),
            ),
        };
    }
    if let Some(b) = body {
        let ct = if method == Method::PATCH { "application/merge-patch+json" } else { "application/json" };
        req = req.header("content-type", ct).body(b.to_string());
    }
    req.send().await.expect("request").status().as_u16()
}

fn alg_none(claims_of: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let claims =
        serde_json::to_string(&Authenticator::claims(claims_of, Role::Admin, vec![], 3600)).unwrap_or_default();
    format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&claims))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_matrix_on_every_protected_route() {
    let app = spawn_app().await;
    let (s, _) = app.post(VMS, &vm_manifest("probe")).await;
    assert_eq!(s, 201);
    let server = app.server.as_ref().expect("running");
    let expired = server.auth.sign(&Authenticator::claims("old", Role::Admin, vec![], -5)).expect("sign");
    let foreign = Authenticator::new(b"some other signing key, not ours!")
        .sign(&Authenticator::claims("x", Role::Admin, vec![], 3600))
        .expect("sign");
    let none = alg_none("x");
    let (s, issued) =
        app.post("/converge/v1/tokens", &json!({"role": "admin", "ttlSeconds": 3600, "subject": "to-revoke"})).await;
    assert_eq!(s, 201, "{issued}");
    let revoked = issued["token"].as_str().expect("token").to_string();
    let (s, _) = app.delete(&format!("/converge/v1/tokens/{}", issued["id"].as_str().unwrap_or_default()), None).await;
    assert_eq!(s, 200);
    let (_, scoped) = app
        .post("/converge/v1/tokens", &json!({"role": "edit", "ttlSeconds": 3600, "namespaces": ["elsewhere"]}))
        .await;
    let scoped = scoped["token"].as_str().expect("token").to_string();

    for carrier in [Carrier::Header, Carrier::WebsocketUrl, Carrier::WebsocketStdPadded] {
        for (method, path, body) in protected_routes() {
            let status = call(&app, method.clone(), path, &body, Some(&app.token), carrier).await;
            assert!((200..300).contains(&status), "{carrier:?} admin {method} {path}: {status}");
            for (what, token) in [
                ("none", None),
                ("expired", Some(&expired)),
                ("wrong key", Some(&foreign)),
                ("alg none", Some(&none)),
                ("revoked", Some(&revoked)),
            ] {
                let status = call(&app, method.clone(), path, &body, token.map(String::as_str), carrier).await;
                assert_eq!(status, 401, "{carrier:?} {what} {method} {path}");
            }
            let status = call(&app, method.clone(), path, &body, Some(&scoped), carrier).await;
            let cluster_read = method == Method::GET
                && (!path.contains("/namespaces/default") || path == "/api/v1/namespaces/default")
                && !path.starts_with("/converge")
                && path != "/apis/kubevirt.io/v1/virtualmachines";
            let want = if cluster_read { 200 } else { 403 };
            assert_eq!(status, want, "{carrier:?} other-namespace token {method} {path}");
        }
    }
    for public in ["/healthz", "/readyz", "/version", "/livez"] {
        assert_eq!(call(&app, Method::GET, public, &None, None, Carrier::Header).await, 200, "{public}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_namespace_scopes() {
    let app = spawn_app().await;
    let issue = |role: &'static str, namespaces: Vec<&'static str>| {
        let app = &app;
        async move {
            let (s, body) = app
                .post("/converge/v1/tokens", &json!({"role": role, "ttlSeconds": 600, "namespaces": namespaces}))
                .await;
            assert_eq!(s, 201, "{body}");
            body["token"].as_str().expect("token").to_string()
        }
    };
    let view = issue("view", vec![]).await;
    let team = issue("edit", vec!["team-a"]).await;
    let (s, _) = app.post("/api/v1/namespaces", &json!({"metadata": {"name": "team-a"}})).await;
    assert_eq!(s, 201);
    let vm = Some(vm_manifest("x"));
    let create_default = call(&app, Method::POST, VMS, &vm, Some(&view), Carrier::Header).await;
    assert_eq!(create_default, 403, "view cannot write");
    assert_eq!(call(&app, Method::GET, VMS, &None, Some(&view), Carrier::Header).await, 200, "view reads");
    let mut in_team = vm_manifest("x");
    in_team["metadata"]["namespace"] = json!("team-a");
    let team_vms = "/apis/kubevirt.io/v1/namespaces/team-a/virtualmachines";
    assert_eq!(call(&app, Method::POST, team_vms, &Some(in_team), Some(&team), Carrier::Header).await, 201);
    assert_eq!(call(&app, Method::GET, VMS, &None, Some(&team), Carrier::Header).await, 403);
    assert_eq!(
        call(&app, Method::GET, "/apis/kubevirt.io/v1/virtualmachines", &None, Some(&team), Carrier::Header).await,
        403,
        "no cluster-wide list of VMs"
    );
    assert_eq!(
        call(&app, Method::GET, "/api/v1/namespaces", &None, Some(&team), Carrier::Header).await,
        200,
        "cluster-scoped kinds are readable"
    );
    let ns = Some(json!({"metadata": {"name": "team-b"}}));
    assert_eq!(call(&app, Method::POST, "/api/v1/namespaces", &ns, Some(&team), Carrier::Header).await, 403);
    assert_eq!(
        call(&app, Method::GET, "/converge/v1/tokens", &None, Some(&team), Carrier::Header).await,
        403,
        "only admins manage tokens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_cli_creates_and_revokes() {
    let app = spawn_app().await;
    let bin = env!("CARGO_BIN_EXE_converge");
    let run = |args: Vec<String>| {
        let kubeconfig = app.kubeconfig.clone();
        async move {
            let out = tokio::process::Command::new(bin)
                .args(&args)
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .output()
                .await
                .expect("converge runs");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (ok, out, err) = run(vec![
        "token".into(),
        "create".into(),
        "--namespace".into(),
        "default".into(),
        "--role".into(),
        "edit".into(),
        "--ttl".into(),
        "24h".into(),
    ])
    .await;
    assert!(ok, "{err}");
    let record: Value = serde_json::from_str(&out).expect("JSON record");
    let token = record["token"].as_str().expect("token");
    assert_eq!(record["role"], "edit");
    assert!(record["expiresAt"].as_i64().unwrap_or(0) - record["createdAt"].as_i64().unwrap_or(0) == 86400);
    assert_eq!(call(&app, Method::GET, VMS, &None, Some(token), Carrier::Header).await, 200);
    let (ok, _, err) =
        run(vec!["token".into(), "revoke".into(), record["id"].as_str().unwrap_or_default().into()]).await;
    assert!(ok, "{err}");
    assert_eq!(call(&app, Method::GET, VMS, &None, Some(token), Carrier::Header).await, 401);
    let (ok, _, err) = run(vec!["token".into(), "create".into(), "--role".into(), "root".into()]).await;
    assert!(!ok && err.contains("unknown"), "{err}");
    let out = tokio::process::Command::new(bin)
        .args(["ca", "--data-dir"])
        .arg(app.dir.path())
        .output()
        .await
        .expect("converge ca");
    assert_eq!(String::from_utf8_lossy(&out.stdout), app.server.as_ref().expect("running").ca_pem);
}

/// Every operation our own OpenAPI document lists, with its parameters filled in, and the
/// protected routes it does not list: subresources, watches, the v1alpha3 alias, documents.
fn every_protected_operation() -> Vec<(Method, String)> {
    let doc = converge_api::openapi::document();
    let mut out = vec![];
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        if converge_api::server::PUBLIC_PATHS.contains(&path.as_str()) || path.starts_with("/v1beta1/upload") {
            continue;
        }
        for method in item.as_object().into_iter().flat_map(|m| m.keys()) {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            out.push((
                method,
                path.replace("{namespace}", "default").replace("{name}", "probe").replace("{id}", "probe"),
            ));
        }
    }
    let sub = "/apis/subresources.kubevirt.io/v1/namespaces/default";
    for action in ["start", "stop", "restart"] {
        out.push((Method::PUT, format!("{sub}/virtualmachines/probe/{action}")));
    }
    for action in ["pause", "unpause"] {
        out.push((Method::PUT, format!("{sub}/virtualmachineinstances/probe/{action}")));
    }
    for socket in ["console", "vnc"] {
        out.push((Method::GET, format!("{sub}/virtualmachineinstances/probe/{socket}")));
    }
    for path in [
        "/apis/subresources.kubevirt.io/v1",
        "/apis/kubevirt.io/v1/namespaces/default/virtualmachines?watch=true",
        "/apis/kubevirt.io/v1/watch/namespaces/default/virtualmachines",
        "/apis/kubevirt.io/v1alpha3/namespaces/default/virtualmachines/probe",
        "/openapi/v2",
        "/openapi/v3",
        "/openapi.json",
    ] {
        out.push((Method::GET, path.to_string()));
    }
    out
}

/// Does a token for namespace `elsewhere` (role edit) get to do this? Only reads of what is
/// not inside another namespace.
fn allowed_to_other_namespace(method: &Method, path: &str) -> bool {
    *method == Method::GET
        && !path.contains("/namespaces/default/")
        && !path.starts_with("/converge")
        && !path.contains("watch")
}

/// The issue's auth matrix: every protected operation, each bad token, in the header and in
/// the websocket subprotocol — refused, before any body is looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protected_operation_refuses_every_bad_token() {
    let app = spawn_app().await;
    let server = app.server.as_ref().expect("running");
    let expired = server.auth.sign(&Authenticator::claims("old", Role::Admin, vec![], -5)).expect("sign");
    let foreign = Authenticator::new(b"some other signing key, not ours!")
        .sign(&Authenticator::claims("x", Role::Admin, vec![], 3600))
        .expect("sign");
    let (s, issued) =
        app.post("/converge/v1/tokens", &json!({"role": "admin", "subject": "to-revoke", "ttlSeconds": 3600})).await;
    assert_eq!(s, 201, "{issued}");
    let revoked = issued["token"].as_str().expect("token").to_string();
    let (s, _) = app.delete(&format!("/converge/v1/tokens/{}", issued["id"].as_str().unwrap_or_default()), None).await;
    assert_eq!(s, 200);
    let (_, scoped) = app
        .post("/converge/v1/tokens", &json!({"role": "edit", "namespaces": ["elsewhere"], "ttlSeconds": 3600}))
        .await;
    let scoped = scoped["token"].as_str().expect("token").to_string();
    for ttl in [json!(0), json!(i64::MAX), json!(-1)] {
        let (s, body) = app.post("/converge/v1/tokens", &json!({"role": "view", "ttlSeconds": ttl})).await;
        assert_eq!(s, 400, "ttlSeconds {ttl}: {body}");
    }
    let none = alg_none("x");
    let bad: [(&str, Option<&str>); 5] = [
        ("no token", None),
        ("expired", Some(&expired)),
        ("alg none", Some(&none)),
        ("wrong key", Some(&foreign)),
        ("revoked", Some(&revoked)),
    ];
    let operations = every_protected_operation();
    assert!(operations.len() > 150, "{}", operations.len());
    let mut checked = 0;
    for (method, path) in &operations {
        let body = (*method != Method::GET && *method != Method::DELETE).then(|| json!({}));
        for carrier in [Carrier::Header, Carrier::WebsocketUrl] {
            for (what, token) in bad {
                let status = call(&app, method.clone(), path, &body, token, carrier).await;
                assert_eq!(status, 401, "{carrier:?} {what}: {method} {path}");
                checked += 1;
            }
            let status = call(&app, method.clone(), path, &body, Some(&scoped), carrier).await;
            if !allowed_to_other_namespace(method, path) {
                assert_eq!(status, 403, "{carrier:?} another namespace's token: {method} {path}");
            }
            checked += 1;
        }
    }
    // A real websocket handshake, with each bad token in the subprotocol, is refused too.
    let b64 = |t: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t);
    for socket in ["console", "vnc"] {
        let path =
            format!("/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/probe/{socket}");
        for (what, token) in
            bad.iter().skip(1).map(|(w, t)| (*w, t.unwrap_or_default())).chain([("another namespace", scoped.as_str())])
        {
            let protocols = format!("plain.kubevirt.io, base64url.bearer.authorization.k8s.io.{}", b64(token));
            let refused = common::guests::ws_with_protocols(&app, &path, &protocols).await;
            let error = refused.err().unwrap_or_default();
            assert!(error.contains("401") || error.contains("403"), "websocket {socket} with {what}: {error}");
        }
    }
    println!("{} operations, {checked} refusals checked", operations.len());
}
