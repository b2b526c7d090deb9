//! Server-side apply with the machine's real kubectl: field managers, conflicts, force, pruning,
//! `kubectl diff --server-side`, and the way to and from client-side apply.

mod common;

use common::*;
use serde_json::Value;

fn json_of(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("kubectl printed no JSON ({e}): {out}"))
}

fn config_map(data: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n{data}")
}

fn manager<'a>(obj: &'a Value, name: &str) -> Option<&'a Value> {
    obj.pointer("/metadata/managedFields")?.as_array()?.iter().find(|e| e["manager"] == name)
}

async fn get_json(app: &TestApp, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json", "--show-managed-fields"]);
    let (ok, out, err) = app.kubectl(&all).await;
    assert!(ok, "{err}");
    json_of(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_conflict_force_and_prune() {
    let app = spawn_api_only().await;
    let ssa = ["apply", "--server-side", "-f", "-"];
    let (ok, out, err) = app.kubectl_stdin(&ssa, Some(&config_map("  a: \"1\"\n  b: \"2\"\n"))).await;
    assert!(ok, "{err}");
    assert!(out.contains("configmap/settings serverside-applied"), "{out}");
    let cm = get_json(&app, &["cm", "settings"]).await;
    let kubectl = manager(&cm, "kubectl").expect("kubectl's entry");
    assert_eq!(kubectl["operation"], "Apply");
    assert_eq!(kubectl["fieldsV1"], serde_json::json!({"f:data": {"f:a": {}, "f:b": {}}}));
    let rv = cm["metadata"]["resourceVersion"].clone();

    // The same configuration again changes nothing, not even the resourceVersion.
    let (ok, _, err) = app.kubectl_stdin(&ssa, Some(&config_map("  a: \"1\"\n  b: \"2\"\n"))).await;
    assert!(ok, "{err}");
    assert_eq!(get_json(&app, &["cm", "settings"]).await["metadata"]["resourceVersion"], rv);

    // A second manager may set the same value (shared) but not change kubectl's.
    let pipeline = ["apply", "--server-side", "--field-manager=pipeline", "-f", "-"];
    let (ok, _, err) = app.kubectl_stdin(&pipeline, Some(&config_map("  a: \"1\"\n  c: \"3\"\n"))).await;
    assert!(ok, "{err}");
    let (ok, _, err) = app.kubectl_stdin(&pipeline, Some(&config_map("  a: \"changed\"\n  c: \"3\"\n"))).await;
    assert!(!ok, "a conflicting apply went through");
    assert!(err.contains("Apply failed with 1 conflict: conflict with \"kubectl\": .data.a"), "{err}");
    assert!(err.contains("--force-conflicts"), "kubectl explains the way out: {err}");

    // kubectl diff --server-side shows what the apply would do, and does nothing.
    let (ok, out, err) = app
        .kubectl_stdin(
            &["diff", "--server-side", "--field-manager=pipeline", "--force-conflicts", "-f", "-"],
            Some(&config_map("  a: \"changed\"\n  c: \"3\"\n")),
        )
        .await;
    assert!(!ok && out.contains("-  a: \"1\"") && out.contains("+  a: changed"), "{out}{err}");
    assert_eq!(get_json(&app, &["cm", "settings"]).await["data"]["a"], "1");

    let forced = ["apply", "--server-side", "--field-manager=pipeline", "--force-conflicts", "-f", "-"];
    let (ok, _, err) = app.kubectl_stdin(&forced, Some(&config_map("  a: \"changed\"\n  c: \"3\"\n"))).await;
    assert!(ok, "{err}");
    let cm = get_json(&app, &["cm", "settings"]).await;
    assert_eq!(cm["data"]["a"], "changed");
    assert_eq!(
        manager(&cm, "kubectl").map(|e| e["fieldsV1"].clone()),
        Some(serde_json::json!({"f:data": {"f:b": {}}}))
    );

    // kubectl stops applying b: b goes (only kubectl had it); a and c stay (pipeline's).
    let (ok, _, err) = app.kubectl_stdin(&ssa, Some(&config_map("  d: \"4\"\n"))).await;
    assert!(ok, "{err}");
    let cm = get_json(&app, &["cm", "settings"]).await;
    assert_eq!(cm["data"], serde_json::json!({"a": "changed", "c": "3", "d": "4"}));

    // An ordinary patch takes the field it changes; kubectl's next apply of it conflicts.
    let (ok, _, err) = app.kubectl(&["patch", "cm", "settings", "-p", r#"{"data":{"d":"patched"}}"#]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = app.kubectl_stdin(&ssa, Some(&config_map("  d: \"4\"\n"))).await;
    assert!(!ok && err.contains("conflict with \"kubectl-patch\" using v1: .data.d"), "{err}");

    // The field manager is required, and force belongs to apply alone.
    let url = format!("{}/api/v1/namespaces/default/configmaps/settings", app.base_url);
    let resp = app
        .http
        .patch(&url)
        .bearer_auth(&app.token)
        .header("content-type", "application/apply-patch+yaml")
        .body(config_map("  e: \"5\"\n"))
        .send()
        .await
        .expect("patch");
    assert_eq!(resp.status(), 422);
    let resp = app
        .http
        .patch(format!("{url}?force=true"))
        .bearer_auth(&app.token)
        .header("content-type", "application/merge-patch+json")
        .body("{}")
        .send()
        .await
        .expect("patch");
    assert_eq!(resp.status(), 422);
}

const VM_YAML: &str = r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: ssa-vm
spec:
  runStrategy: Halted
  template:
    spec:
      domain:
        devices:
          disks:
          - name: root
            disk: {}
          interfaces:
          - name: default
            masquerade: {}
        resources:
          requests:
            memory: 128Mi
      networks:
      - name: default
        pod: {}
      volumes:
      - name: root
        containerDisk:
          image: registry.local/busybox
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_machines_apply_server_side_and_keep_their_mac() {
    let app = spawn_api_only().await;
    let ssa = ["apply", "--server-side", "-f", "-"];
    let (ok, out, err) = app.kubectl_stdin(&ssa, Some(VM_YAML)).await;
    assert!(ok, "{err}");
    assert!(out.contains("virtualmachine.kubevirt.io/ssa-vm serverside-applied"), "{out}");
    let first = get_json(&app, &["vm", "ssa-vm"]).await;
    let mac = first.pointer("/spec/template/spec/domain/devices/interfaces/0/macAddress").cloned();
    assert!(mac.as_ref().and_then(Value::as_str).is_some_and(|m| m.starts_with("02:")), "{first}");
    let owned = &manager(&first, "kubectl").expect("kubectl's entry")["fieldsV1"];
    // KubeVirt's CRDs make disks an atomic list: owned whole, as on a real cluster.
    assert_eq!(owned.pointer("/f:spec/f:template/f:spec/f:domain/f:devices/f:disks"), Some(&serde_json::json!({})));

    let (ok, _, err) = app.kubectl_stdin(&ssa, Some(VM_YAML)).await;
    assert!(ok, "{err}");
    let again = get_json(&app, &["vm", "ssa-vm"]).await;
    assert_eq!(again["metadata"]["resourceVersion"], first["metadata"]["resourceVersion"]);

    let bigger = VM_YAML.replace("memory: 128Mi", "memory: 256Mi");
    let (ok, _, err) = app.kubectl_stdin(&ssa, Some(&bigger)).await;
    assert!(ok, "{err}");
    let after = get_json(&app, &["vm", "ssa-vm"]).await;
    assert_eq!(
        after.pointer("/spec/template/spec/domain/resources/requests/memory"),
        Some(&serde_json::json!("256Mi"))
    );
    assert_eq!(after["metadata"]["generation"], 2);
    assert_eq!(
        after.pointer("/spec/template/spec/domain/devices/interfaces/0/macAddress").cloned(),
        mac,
        "the MAC stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_side_apply_migrates_to_server_side_and_back() {
    let app = spawn_api_only().await;
    let (ok, _, err) = app.kubectl_stdin(&["apply", "-f", "-"], Some(&config_map("  a: \"1\"\n"))).await;
    assert!(ok, "{err}");
    let cm = get_json(&app, &["cm", "settings"]).await;
    assert!(manager(&cm, "kubectl-client-side-apply").is_some(), "{cm}");

    // kubectl hands client-side apply's fields to its server-side manager first (a JSON patch
    // of managedFields), so changing them is no conflict.
    let (ok, _, err) =
        app.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&config_map("  a: \"2\"\n"))).await;
    assert!(ok, "{err}");
    let cm = get_json(&app, &["cm", "settings"]).await;
    assert_eq!(cm["data"]["a"], "2");
    assert!(manager(&cm, "kubectl-client-side-apply").is_none(), "{cm}");
    let last =
        cm.pointer("/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration").and_then(Value::as_str);
    assert!(last.is_some_and(|l| l.contains("\"a\":\"2\"")), "last-applied kept current: {last:?}");

    // And back: client-side apply computes its patch from that annotation.
    let (ok, _, err) = app.kubectl_stdin(&["apply", "-f", "-"], Some(&config_map("  b: \"3\"\n"))).await;
    assert!(ok, "{err}");
    let cm = get_json(&app, &["cm", "settings"]).await;
    assert_eq!(cm["data"], serde_json::json!({"b": "3"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_versions_apply_and_unserved_kinds_get_kubectls_own_answer() {
    let app = spawn_api_only().await;
    // Foreman's plugin and CDI's vm-dv.yaml example pin kubevirt.io/v1alpha3.
    let old = VM_YAML.replace("kubevirt.io/v1", "kubevirt.io/v1alpha3").replace("ssa-vm", "old-vm");
    let (ok, out, err) = app.kubectl_stdin(&["apply", "-f", "-"], Some(&old)).await;
    assert!(ok, "{err}");
    assert!(out.contains("virtualmachine.kubevirt.io/old-vm created"), "{out}");
    let (ok, _, err) =
        app.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&old.replace("128Mi", "192Mi"))).await;
    assert!(ok, "{err}");
    let vm = get_json(&app, &["vm", "old-vm"]).await;
    assert_eq!(vm.pointer("/spec/template/spec/domain/resources/requests/memory"), Some(&serde_json::json!("192Mi")));
    assert_eq!(
        manager(&vm, "kubectl").map(|e| e["apiVersion"].clone()),
        Some(serde_json::json!("kubevirt.io/v1alpha3"))
    );
    // Server-side validation on the alias, as on v1: an unknown field is named.
    let typo = old.replace("runStrategy: Halted", "runStrategy: Halted\n  runStrategi: Always");
    let (ok, _, err) = app.kubectl_stdin(&["apply", "-f", "-"], Some(&typo)).await;
    assert!(!ok && err.contains("unknown field \"spec.runStrategi\""), "{err}");

    // The form of CDI's vm-dv.yaml example: v1alpha3, `running`, an empty machine type and a
    // DataVolume template with the pvc API, applied both ways.
    let vm_dv = "apiVersion: kubevirt.io/v1alpha3\nkind: VirtualMachine\nmetadata:\n  name: vm-dv\n  creationTimestamp: null\nspec:\n  running: false\n  dataVolumeTemplates:\n  - metadata:\n      name: vm-dv-root\n      creationTimestamp: null\n    spec:\n      pvc:\n        accessModes: [ReadWriteOnce]\n        resources:\n          requests:\n            storage: 100M\n      source:\n        http:\n          url: http://images.example/disk.img\n  template:\n    spec:\n      domain:\n        devices:\n          disks:\n          - disk: {bus: virtio}\n            name: root\n        machine:\n          type: \"\"\n        resources:\n          requests:\n            memory: 64M\n      terminationGracePeriodSeconds: 0\n      volumes:\n      - dataVolume:\n          name: vm-dv-root\n        name: root\n";
    for args in
        [&["apply", "--dry-run=server", "-f", "-"][..], &["apply", "-f", "-"], &["apply", "--server-side", "-f", "-"]]
    {
        let (ok, out, err) = app.kubectl_stdin(args, Some(vm_dv)).await;
        assert!(ok && out.contains("virtualmachine.kubevirt.io/vm-dv"), "kubectl {args:?}: {out}{err}");
    }

    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: web\n        image: nginx\n";
    let (ok, _, err) = app.kubectl_stdin(&["apply", "-f", "-"], Some(deployment)).await;
    assert!(!ok && err.contains("no matches for kind \"Deployment\" in version \"apps/v1\""), "{err}");
    let (ok, _, err) = app.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(deployment)).await;
    assert!(!ok && err.contains("no matches for kind \"Deployment\" in version \"apps/v1\""), "{err}");
    // What kubectl asked before that answer: which custom kinds this server has.
    let (ok, out, err) = app.kubectl(&["get", "crds"]).await;
    assert!(
        ok && out.contains("virtualmachines.kubevirt.io") && out.contains("datavolumes.cdi.kubevirt.io"),
        "{out}{err}"
    );
    assert!(!out.contains("<unknown>"), "{out}");
    let (ok, _, err) = app.kubectl(&["delete", "crd", "virtualmachines.kubevirt.io"]).await;
    assert!(!ok && err.contains("read-only"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_can_i_and_whoami() {
    let app = spawn_api_only().await;
    let (s, body) = app.post("/api/v1/namespaces", &serde_json::json!({"metadata": {"name": "team-a"}})).await;
    assert_eq!(s, 201, "{body}");
    let (ok, out, err) = app.kubectl(&["auth", "can-i", "create", "vm"]).await;
    assert!(ok && out.trim() == "yes", "{out}{err}");
    let (s, body) = app
        .post("/converge/v1/tokens", &serde_json::json!({"role": "edit", "ttlSeconds": 600, "namespaces": ["team-a"]}))
        .await;
    assert_eq!(s, 201, "{body}");
    let tenant = tenant_kubeconfig(&app, body["token"].as_str().unwrap_or_default());
    let limit = std::time::Duration::from_secs(60);
    let (ok, out, _) = run_kubectl(
        &tenant,
        app.dir.path(),
        &["auth", "can-i", "create", "virtualmachines", "-n", "team-a"],
        None,
        limit,
    )
    .await;
    assert!(ok && out.trim() == "yes", "{out}");
    let (ok, out, _) =
        run_kubectl(&tenant, app.dir.path(), &["auth", "can-i", "delete", "vm", "-n", "default"], None, limit).await;
    assert!(!ok && out.trim().starts_with("no"), "{out}");
    let (ok, out, _) = run_kubectl(
        &tenant,
        app.dir.path(),
        &["auth", "can-i", "patch", "vmi", "--subresource=status", "-n", "team-a"],
        None,
        limit,
    )
    .await;
    assert!(!ok && out.trim().starts_with("no"), "{out}");
    let (ok, out, err) = run_kubectl(&tenant, app.dir.path(), &["auth", "whoami"], None, limit).await;
    assert!(ok && out.contains("converge:edit") && out.contains("converge:namespace:team-a"), "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_generators_for_the_kinds_served() {
    let app = spawn_api_only().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=web"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(made.status.success());
    let (cert, key) = (format!("--cert={}", cert.display()), format!("--key={}", key.display()));
    // Each is sent as kubectl's typed client sends it (protobuf for these core kinds).
    let generators: Vec<(Vec<&str>, &str)> = vec![
        (vec!["create", "namespace", "lab"], "namespace/lab created"),
        (vec!["create", "configmap", "cfg", "--from-literal=a=1"], "configmap/cfg created"),
        (vec!["create", "secret", "generic", "pw", "--from-literal=user=admin"], "secret/pw created"),
        (
            vec![
                "create",
                "secret",
                "docker-registry",
                "reg",
                "--docker-server=r.example",
                "--docker-username=u",
                "--docker-password=p",
            ],
            "secret/reg created",
        ),
        (vec!["create", "secret", "tls", "web-tls", &cert, &key], "secret/web-tls created"),
        (vec!["create", "service", "clusterip", "ghost", "--tcp=80:8080"], "service/ghost created"),
        (vec!["create", "service", "nodeport", "np", "--tcp=8443:443"], "service/np created"),
        (vec!["create", "service", "clusterip", "headless", "--clusterip=None"], "service/headless created"),
    ];
    for (args, want) in &generators {
        let (ok, out, err) = app.kubectl(args).await;
        assert!(ok && out.contains(want), "kubectl {args:?}: {out}{err}");
    }
    let svc = get_json(&app, &["svc", "ghost"]).await;
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(svc["spec"]["selector"], serde_json::json!({"app": "ghost"}));
    let np = get_json(&app, &["svc", "np"]).await;
    assert!(np["spec"]["ports"][0]["nodePort"].as_i64().is_some_and(|p| p >= 30000), "{np}");
    let pw = get_json(&app, &["secret", "pw"]).await;
    assert_eq!(pw["data"]["user"], "YWRtaW4=");
    let tls = get_json(&app, &["secret", "web-tls"]).await;
    assert_eq!(tls["type"], "kubernetes.io/tls");

    // A body in a type no endpoint takes: a 415 naming what a POST takes.
    let url = format!("{}/apis/kubevirt.io/v1/namespaces/default/virtualmachines", app.base_url);
    let resp = app
        .http
        .post(&url)
        .bearer_auth(&app.token)
        .header("content-type", "application/vnd.kubernetes.protobuf")
        .body("k8s\0")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 415);
    let text = resp.text().await.unwrap_or_default();
    assert!(text.contains("application/json, application/yaml") && !text.contains("patch"), "{text}");
}

/// The server's kubeconfig with a tenant's token in place of the admin's.
fn tenant_kubeconfig(app: &TestApp, token: &str) -> std::path::PathBuf {
    let admin = std::fs::read_to_string(&app.kubeconfig).expect("kubeconfig");
    let text: Vec<String> = admin
        .lines()
        .map(|l| match l.split_once("token:") {
            Some((indent, _)) => format!("{indent}token: {token}"),
            None => l.to_string(),
        })
        .collect();
    let path = app.dir.path().join("tenant.kubeconfig");
    std::fs::write(&path, text.join("\n")).expect("write kubeconfig");
    path
}
