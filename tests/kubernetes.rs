//! Converge on a real Kubernetes control plane (kube-apiserver, kube-controller-manager,
//! kube-scheduler and etcd built from the Go module proxy by `scripts/kubernetes.sh`). Skipped,
//! with the reason printed, only when those binaries are not built; `scripts/test` builds them.

mod common;

use common::kubernetes::{cluster, RealCluster};
use common::wait_until;
use serde_json::Value;
use std::time::Duration;

async fn manifests() -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_converge"))
        .arg("manifests")
        .output()
        .await
        .expect("converge manifests runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 manifests")
}

fn vm_yaml(namespace: &str, name: &str, extra_spec: &str) -> String {
    format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
  namespace: {namespace}
spec:
  runStrategy: Halted{extra_spec}
  template:
    metadata:
      labels:
        kubevirt.io/domain: {name}
    spec:
      domain:
        devices:
          disks:
          - name: root
            disk: {{}}
        resources:
          requests:
            memory: 128Mi
      volumes:
      - name: root
        containerDisk:
          image: registry.local/busybox
"#
    )
}

async fn ok(c: &RealCluster, args: &[&str], stdin: Option<&str>) -> String {
    let (ok, out, err) = c.kubectl(args, stdin).await;
    assert!(ok, "kubectl {args:?}: {err}{}", c.logs());
    out
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `converge manifests | kubectl apply -f -`: the CRDs are taken as structural and established,
/// kubectl reads and writes the kinds with the embedded API's columns and versions, the schema
/// refuses what the embedded walker refuses, Kubernetes RBAC's edit role reaches the kinds
/// through aggregation, and `kubectl delete -f` takes it all away again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_install_serve_the_kinds_and_uninstall() {
    let Some(c) = cluster() else { return };
    let text = manifests().await;
    let applied = ok(c, &["apply", "-f", "-"], Some(&text)).await;
    assert!(
        applied.contains("customresourcedefinition.apiextensions.k8s.io/virtualmachines.kubevirt.io created"),
        "{applied}"
    );
    ok(
        c,
        &["wait", "--for=condition=Established", "crd", "-l", "app.kubernetes.io/part-of=converge", "--timeout=60s"],
        None,
    )
    .await;
    let again = ok(c, &["apply", "-f", "-"], Some(&text)).await;
    assert!(!again.contains("created") && again.contains("unchanged"), "{again}");

    ok(c, &["create", "namespace", "k-basic"], None).await;
    ok(c, &["create", "namespace", "k-other"], None).await;
    let vm = vm_yaml("k-basic", "web01", "");
    let created = ok(c, &["apply", "-f", "-"], Some(&vm)).await;
    assert!(created.contains("virtualmachine.kubevirt.io/web01 created"), "{created}");
    let table = ok(c, &["get", "vm", "-n", "k-basic"], None).await;
    let header: Vec<&str> = table.lines().next().unwrap_or("").split_whitespace().collect();
    assert_eq!(header, vec!["NAME", "AGE", "STATUS", "READY"], "{table}");
    // A VMI alone (nothing runs it yet): its wide columns are the embedded API's.
    ok(c, &["apply", "-f", "-"], Some(LONELY_VMI)).await;
    let wide = ok(c, &["get", "vmi", "-n", "k-basic", "-o", "wide"], None).await;
    let header: Vec<&str> = wide.lines().next().unwrap_or("").split_whitespace().collect();
    assert_eq!(header, vec!["NAME", "AGE", "PHASE", "IP", "NODENAME", "READY", "LIVE-MIGRATABLE", "PAUSED"], "{wide}");

    // Foreman's pinned version reads the same object.
    let (ok_old, old, warning) =
        c.kubectl(&["get", "virtualmachines.v1alpha3.kubevirt.io", "web01", "-n", "k-basic", "-o", "json"], None).await;
    assert!(ok_old, "{warning}");
    let old = json_of(&old);
    assert_eq!(old["apiVersion"], "kubevirt.io/v1alpha3");
    assert_eq!(old["spec"]["template"]["metadata"]["labels"]["kubevirt.io/domain"], "web01");
    assert!(warning.contains("kubevirt.io/v1alpha3 is now deprecated"), "{warning}");

    // What the schema refuses, in the apiserver's words.
    let no_template = "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {name: broken, namespace: k-basic}\nspec: {runStrategy: Halted}\n";
    let (refused, _, err) = c.kubectl(&["apply", "-f", "-"], Some(no_template)).await;
    assert!(!refused && err.contains("spec.template: Required value"), "{err}");
    let bogus = vm_yaml("k-basic", "web02", "\n  bogus: 1");
    let (strict, _, err) = c.kubectl(&["apply", "--validate=strict", "-f", "-"], Some(&bogus)).await;
    assert!(!strict && err.contains("unknown field \"spec.bogus\""), "{err}");
    let memory_as_number = vm_yaml("k-basic", "web03", "").replace("memory: 128Mi", "memory: 134217728");
    ok(c, &["apply", "-f", "-"], Some(&memory_as_number)).await;
    let stored = json_of(&ok(c, &["get", "vm", "web03", "-n", "k-basic", "-o", "json"], None).await);
    assert_eq!(stored["spec"]["template"]["spec"]["domain"]["resources"]["requests"]["memory"], 134217728);

    // A namespace's editor (Kubernetes' own `edit`, which `converge:edit` aggregates into).
    ok(c, &["create", "serviceaccount", "alice", "-n", "k-basic"], None).await;
    ok(
        c,
        &[
            "create",
            "rolebinding",
            "alice-edit",
            "--clusterrole=edit",
            "--serviceaccount=k-basic:alice",
            "-n",
            "k-basic",
        ],
        None,
    )
    .await;
    let aggregated = wait_until(Duration::from_secs(30), || async {
        let (_, out, _) = c
            .kubectl(
                &[
                    "auth",
                    "can-i",
                    "create",
                    "virtualmachines.kubevirt.io",
                    "-n",
                    "k-basic",
                    "--as=system:serviceaccount:k-basic:alice",
                ],
                None,
            )
            .await;
        out.trim() == "yes"
    })
    .await;
    assert!(aggregated, "edit never came to include virtualmachines{}", c.logs());
    let token = ok(c, &["create", "token", "alice", "-n", "k-basic"], None).await;
    let alice = c.kubeconfig_for("alice", token.trim());
    let (mine, out, err) = c.kubectl_with(&alice, &["apply", "-f", "-"], Some(&vm_yaml("k-basic", "alices", ""))).await;
    assert!(mine, "{out}{err}");
    let (theirs, _, err) = c.kubectl_with(&alice, &["get", "vms", "-n", "k-other"], None).await;
    assert!(!theirs && err.contains("Forbidden"), "{err}");
    let (cluster_wide, _, err) = c.kubectl_with(&alice, &["create", "-f", "-"], Some(CLUSTER_INSTANCETYPE)).await;
    assert!(!cluster_wide && err.contains("Forbidden"), "{err}");

    // Uninstall: the kinds and every object of them go.
    ok(c, &["delete", "namespace", "k-basic", "k-other", "--wait=false"], None).await;
    let deleted = ok(c, &["delete", "-f", "-", "--timeout=120s"], Some(&text)).await;
    assert!(
        deleted.contains("customresourcedefinition.apiextensions.k8s.io \"virtualmachines.kubevirt.io\" deleted"),
        "{deleted}"
    );
    let crds = ok(c, &["get", "crd", "-l", "app.kubernetes.io/part-of=converge", "-o", "name"], None).await;
    assert!(crds.trim().is_empty(), "{crds}");
    let gone = wait_until(Duration::from_secs(30), || async {
        let (_, _, err) = c.kubectl(&["get", "--raw", "/apis/kubevirt.io/v1"], None).await;
        err.contains("NotFound")
    })
    .await;
    assert!(gone, "kubevirt.io/v1 is still served");
}

const CLUSTER_INSTANCETYPE: &str = "apiVersion: instancetype.kubevirt.io/v1beta1
kind: VirtualMachineClusterInstancetype
metadata: {name: small}
spec:
  cpu: {guest: 1}
  memory: {guest: 128Mi}
";

const LONELY_VMI: &str = "apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: lonely, namespace: k-basic}
spec:
  domain:
    devices: {}
    resources: {requests: {memory: 128Mi}}
";
