//! The machine's real kubectl against a real server, over HTTPS with the kubeconfig it wrote.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

const VM_YAML: &str = r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: web01.example.com
  labels:
    app: web
spec:
  runStrategy: Halted
  template:
    metadata:
      labels:
        kubevirt.io/domain: web01
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

fn json_of(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("kubectl printed no JSON ({e}): {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_twice_is_a_no_op_and_get_describe_work() {
    let app = spawn_app().await;
    let (ok, out, err) = app.kubectl_stdin(&["apply", "-f", "-"], Some(VM_YAML)).await;
    assert!(ok, "{err}");
    assert!(out.contains("virtualmachine.kubevirt.io/web01.example.com created"), "{out}");
    let (_, first, _) = app.kubectl(&["get", "vm", "web01.example.com", "-o", "json"]).await;
    let first = json_of(&first);
    let mac = first.pointer("/spec/template/spec/domain/devices/interfaces/0/macAddress").cloned();
    assert!(
        mac.as_ref().and_then(Value::as_str).is_some_and(|m| m.starts_with("02:")),
        "MAC assigned at admission: {first}"
    );
    let (ok, _, err) = app.kubectl_stdin(&["apply", "-f", "-"], Some(VM_YAML)).await;
    assert!(ok, "{err}");
    let (_, second, _) = app.kubectl(&["get", "vm", "web01.example.com", "-o", "json"]).await;
    let second = json_of(&second);
    assert_eq!(
        first["metadata"]["resourceVersion"], second["metadata"]["resourceVersion"],
        "second apply changed nothing"
    );
    assert_eq!(second["metadata"]["generation"], 1);
    assert_eq!(second.pointer("/spec/template/spec/domain/devices/interfaces/0/macAddress").cloned(), mac);

    for args in [&["get", "vm"][..], &["get", "vms"], &["get", "virtualmachines.kubevirt.io"]] {
        let (ok, out, err) = app.kubectl(args).await;
        assert!(ok, "{err}");
        assert!(
            out.starts_with("NAME") && out.contains("AGE") && out.contains("STATUS") && out.contains("READY"),
            "{out}"
        );
        assert!(out.contains("web01.example.com"), "{out}");
    }
    let (ok, out, _) = app.kubectl(&["get", "vm", "-A"]).await;
    assert!(ok && out.starts_with("NAMESPACE") && out.contains("default"), "{out}");
    let (ok, out, _) = app.kubectl(&["get", "vm", "-o", "yaml", "web01.example.com"]).await;
    assert!(
        ok && out.contains("kind: VirtualMachine") && out.contains("machine:") && out.contains("type: q35"),
        "{out}"
    );
    let (ok, out, err) = app.kubectl(&["describe", "vm", "web01.example.com"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("Name:         web01.example.com") && out.contains("Run Strategy:  Halted"), "{out}");
    let (ok, out, _) = app.kubectl(&["get", "all"]).await;
    assert!(ok && out.contains("virtualmachine.kubevirt.io/web01.example.com"), "the `all` category lists VMs: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_chunks_labels_annotations_and_patches() {
    let app = spawn_app().await;
    for i in 0..7 {
        let mut vm = vm_manifest(&format!("vm-{i}"));
        vm["metadata"]["labels"]["tier"] = Value::from(if i % 2 == 0 { "front" } else { "back" });
        let (s, body) = app.post(VMS, &vm).await;
        assert_eq!(s, 201, "{body}");
    }
    let (ok, out, _) = app.kubectl(&["get", "vm", "-l", "tier=front", "-o", "name"]).await;
    assert!(ok);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec![
            "virtualmachine.kubevirt.io/vm-0",
            "virtualmachine.kubevirt.io/vm-2",
            "virtualmachine.kubevirt.io/vm-4",
            "virtualmachine.kubevirt.io/vm-6"
        ]
    );
    let (_, out, _) = app.kubectl(&["get", "vm", "-l", "tier notin (front),app", "-o", "name"]).await;
    assert_eq!(out.lines().count(), 3, "{out}");
    let (_, out, _) = app.kubectl(&["get", "vm", "-l", "!tier", "-o", "name"]).await;
    assert_eq!(out.trim(), "");
    let (ok, out, err) = app.kubectl(&["get", "vm", "--chunk-size=2", "-v=6"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().filter(|l| l.starts_with("vm-")).count(), 7, "{out}");
    assert!(err.matches("continue=").count() >= 3, "kubectl paged with continue tokens: {err}");

    let (ok, _, err) = app.kubectl(&["label", "vm", "vm-1", "owner=ops"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = app.kubectl(&["annotate", "vm", "vm-1", "note=first"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) =
        app.kubectl(&["patch", "vm", "vm-1", "--type", "merge", "-p", r#"{"spec":{"runStrategy":"Always"}}"#]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = app
        .kubectl(&[
            "patch",
            "vm",
            "vm-1",
            "--type",
            "json",
            "-p",
            r#"[{"op":"replace","path":"/spec/runStrategy","value":"Manual"}]"#,
        ])
        .await;
    assert!(ok, "{err}");
    let (ok, _, err) = app.kubectl(&["patch", "vm", "vm-1", "--type", "strategic", "-p", r#"{"spec":{}}"#]).await;
    assert!(
        !ok && err.contains("UnsupportedMediaType") || err.contains("unknown format"),
        "CRDs refuse strategic merge: {err}"
    );
    let (_, out, _) = app.kubectl(&["get", "vm", "vm-1", "-o", "json"]).await;
    let vm = json_of(&out);
    assert_eq!(vm["metadata"]["labels"]["owner"], "ops");
    assert_eq!(vm["metadata"]["annotations"]["note"], "first");
    assert_eq!(vm["spec"]["runStrategy"], "Manual");
    assert_eq!(vm["metadata"]["generation"], 3, "two spec changes, label and annotation do not count");

    // `kubectl edit` itself, with a non-interactive editor.
    let edit = |script: &'static str| {
        let app = &app;
        async move {
            let out = tokio::process::Command::new("kubectl")
                .args(["edit", "vm", "vm-1"])
                .env("KUBECONFIG", &app.kubeconfig)
                .env("HOME", app.dir.path())
                // kubectl runs $EDITOR through `sh -c`.
                .env("EDITOR", format!("sed -i '{script}'"))
                .output()
                .await
                .expect("kubectl edit");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
            )
        }
    };
    let (ok, out) = edit("s/runStrategy: Manual/runStrategy: Always/").await;
    assert!(ok && out.contains("edited"), "{out}");
    let (ok, out) = edit("s/runStrategy: Always/runStrategy: Sometimes/").await;
    assert!(!ok && out.contains("is invalid"), "{out}");
    let (_, out, _) = app.kubectl(&["get", "vm", "vm-1", "-o", "jsonpath={.spec.runStrategy}"]).await;
    assert_eq!(out, "Always", "a refused edit changes nothing");
    let (ok, _, err) =
        app.kubectl(&["patch", "vm", "vm-1", "--type", "merge", "-p", r#"{"spec":{"runStrategy":"Manual"}}"#]).await;
    assert!(ok, "{err}");
    let (_, out, _) = app.kubectl(&["get", "vm", "vm-1", "-o", "json"]).await;
    let vm = json_of(&out);

    // The edit equivalent: read, change, replace.
    let mut edited = vm.clone();
    edited["spec"]["template"]["spec"]["domain"]["resources"]["requests"]["memory"] = Value::from("256Mi");
    let (ok, _, err) = app.kubectl_stdin(&["replace", "-f", "-"], Some(&edited.to_string())).await;
    assert!(ok, "{err}");
    // Replacing with the stale resourceVersion is a conflict.
    let (ok, _, err) = app.kubectl_stdin(&["replace", "-f", "-"], Some(&edited.to_string())).await;
    assert!(!ok && err.contains("the object has been modified"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let cases = [
        (
            VM_YAML.replace("      - name: root\n        containerDisk", "      - name: other\n        containerDisk"),
            "spec.template.spec.domain.devices.disks[0].name",
        ),
        (VM_YAML.replace("memory: 128Mi", "memory: 12 8Mi"), "spec.template.spec.domain.resources.requests.memory"),
        (VM_YAML.replace("runStrategy: Halted", "runStrategy: Sometimes"), "spec.runStrategy"),
        (VM_YAML.replace("runStrategy: Halted", "runStrategy: Halted\n  running: true"), "spec.running"),
        (VM_YAML.replace("name: web01.example.com", "name: Web_01"), "metadata.name"),
    ];
    for (manifest, field) in cases {
        let (ok, _, err) = app.kubectl_stdin(&["apply", "-f", "-"], Some(&manifest)).await;
        assert!(!ok, "accepted: {manifest}");
        assert!(err.contains(field), "error names {field}: {err}");
    }
    let unknown = VM_YAML.replace("  runStrategy: Halted", "  runStrategy: Halted\n  bogusField: 1");
    let (ok, _, err) = app.kubectl_stdin(&["apply", "--validate=strict", "-f", "-"], Some(&unknown)).await;
    assert!(!ok && err.contains("strict decoding error: unknown field \"spec.bogusField\""), "{err}");
    let (ok, _, err) = app.kubectl_stdin(&["create", "--validate=warn", "-f", "-"], Some(&unknown)).await;
    assert!(ok, "{err}");
    assert!(err.contains("unknown field \"spec.bogusField\""), "warned: {err}");
    let (_, out, _) = app.kubectl(&["get", "vm", "web01.example.com", "-o", "json"]).await;
    assert!(json_of(&out)["spec"].get("bogusField").is_none(), "pruned");
    let (_, out, _) = app.kubectl(&["get", "vm", "-o", "name"]).await;
    assert_eq!(out.trim(), "virtualmachine.kubevirt.io/web01.example.com", "nothing refused was stored");
}

async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut tokio::io::Lines<R>) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.ok().and_then(Result::ok).flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_wait_and_delete() {
    let app = spawn_app().await;
    let (s, _) = app.post(VMS, &vm_manifest("watched")).await;
    assert_eq!(s, 201);
    let mut watch = tokio::process::Command::new("kubectl")
        .args(["get", "vm", "-w", "--output-watch-events", "--request-timeout=20s"])
        .env("KUBECONFIG", &app.kubeconfig)
        .env("HOME", app.dir.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(watch.stdout.take().expect("stdout")));
    let mut seen = vec![];
    while let Some(l) = next_line(&mut lines).await {
        seen.push(l.clone());
        if l.starts_with("ADDED") {
            break;
        }
    }
    let (ok, _, err) = app.kubectl(&["label", "vm", "watched", "seen=yes"]).await;
    assert!(ok, "{err}");
    let waiter = {
        let kubeconfig = app.kubeconfig.clone();
        let home = app.dir.path().to_path_buf();
        tokio::spawn(async move {
            tokio::process::Command::new("kubectl")
                .args(["wait", "--for=delete", "vm/watched", "--timeout=30s"])
                .env("KUBECONFIG", kubeconfig)
                .env("HOME", home)
                .output()
                .await
        })
    };
    let (ok, out, err) = app.kubectl(&["delete", "vm", "watched", "--dry-run=server"]).await;
    assert!(ok && out.contains("deleted (server dry run)"), "{out}{err}");
    let (ok, _, _) = app.kubectl(&["get", "vm", "watched"]).await;
    assert!(ok, "a dry-run delete deletes nothing");
    let (ok, out, err) = app.kubectl(&["delete", "vm", "watched"]).await;
    assert!(ok && out.contains("virtualmachine.kubevirt.io \"watched\" deleted"), "{out}{err}");
    while let Some(l) = next_line(&mut lines).await {
        seen.push(l.clone());
        if l.starts_with("DELETED") {
            break;
        }
    }
    let kinds: Vec<&str> = seen.iter().filter_map(|l| l.split_whitespace().next()).filter(|w| *w != "EVENT").collect();
    assert_eq!(kinds, vec!["ADDED", "MODIFIED", "DELETED"], "{seen:?}");
    let waited = waiter.await.expect("join").expect("kubectl wait");
    assert!(waited.status.success(), "{}", String::from_utf8_lossy(&waited.stderr));
    let (ok, _, err) = app.kubectl(&["get", "vm", "watched"]).await;
    assert!(!ok && err.contains("NotFound"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_kinds_through_apply_and_events_for_describe() {
    let app = spawn_app().await;
    let manifests = r#"apiVersion: v1
kind: Namespace
metadata:
  name: team-a
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: team-a
data:
  a: "1"
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
  namespace: team-a
stringData:
  user: admin
"#;
    let (ok, out, err) = app.kubectl_stdin(&["apply", "-f", "-"], Some(manifests)).await;
    assert!(ok, "{out}{err}");
    let (ok, out, _) = app.kubectl(&["get", "ns"]).await;
    assert!(ok && out.contains("team-a") && out.contains("Active"), "{out}");
    let (ok, out, _) = app.kubectl(&["-n", "team-a", "get", "secret", "creds", "-o", "jsonpath={.data.user}"]).await;
    assert!(ok && out == "YWRtaW4=", "{out}");
    let (ok, _, err) =
        app.kubectl(&["-n", "team-a", "patch", "configmap", "settings", "-p", r#"{"data":{"b":"2"}}"#]).await;
    assert!(ok, "strategic merge patch on a core kind: {err}");
    let (_, out, _) = app.kubectl(&["-n", "team-a", "get", "cm", "settings", "-o", "jsonpath={.data}"]).await;
    assert_eq!(json_of(&out), serde_json::json!({"a": "1", "b": "2"}));

    let (s, vm) = app.post(VMS, &vm_manifest("described")).await;
    assert_eq!(s, 201);
    let event = serde_json::json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "described.1", "namespace": "default"},
        "involvedObject": {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "name": "described", "namespace": "default", "uid": vm["metadata"]["uid"]},
        "reason": "SuccessfulCreate", "message": "Created virtual machine", "type": "Normal",
        "firstTimestamp": vm["metadata"]["creationTimestamp"], "lastTimestamp": vm["metadata"]["creationTimestamp"], "count": 1,
        "source": {"component": "converge"}
    });
    let (s, body) = app.post("/api/v1/namespaces/default/events", &event).await;
    assert_eq!(s, 201, "{body}");
    let (ok, out, err) = app.kubectl(&["describe", "vm", "described"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("SuccessfulCreate") && out.contains("Created virtual machine"),
        "describe shows the VM's events: {out}"
    );

    // kubectl's generators send protobuf bodies for core kinds.
    let (ok, out, err) = app.kubectl(&["create", "namespace", "team-b"]).await;
    assert!(ok && out.contains("namespace/team-b created"), "{out}{err}");
    let (ok, _, err) = app.kubectl(&["-n", "team-b", "create", "configmap", "gen", "--from-literal=k=v"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) =
        app.kubectl(&["-n", "team-b", "create", "secret", "generic", "gen", "--from-literal=user=admin"]).await;
    assert!(ok, "{err}");
    let (_, out, _) = app.kubectl(&["-n", "team-b", "get", "cm", "gen", "-o", "jsonpath={.data.k}"]).await;
    assert_eq!(out, "v");
    let (_, out, _) =
        app.kubectl(&["-n", "team-b", "get", "secret", "gen", "-o", "jsonpath={.type} {.data.user}"]).await;
    assert_eq!(out, "Opaque YWRtaW4=");

    let (ok, _, err) = app.kubectl(&["delete", "ns", "team-a"]).await;
    assert!(ok, "{err}");
    let gone =
        wait_until(Duration::from_secs(20), || async { app.get("/api/v1/namespaces/team-a").await.0 == 404 }).await;
    assert!(gone, "the namespace and its contents are collected");
    assert_eq!(app.get("/api/v1/namespaces/team-a/configmaps/settings").await.0, 404);
}
