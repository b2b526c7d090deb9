//! Converge on a real Kubernetes control plane (kube-apiserver, kube-controller-manager,
//! kube-scheduler and etcd built from the Go module proxy by `scripts/kubernetes.sh`). Skipped,
//! with the reason printed, only when those binaries are not built; `scripts/test` builds them.

mod common;

use common::kubernetes::{cluster, RealCluster};
use common::kubernetes_agents::*;
use common::wait_until;
use serde_json::Value;
use std::time::Duration;

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

/// `converge manifests | kubectl apply -f -`: the CRDs are taken as structural and established,
/// kubectl reads and writes the kinds with the embedded API's columns and versions, the schema
/// refuses what the embedded walker refuses, Kubernetes RBAC's edit role reaches the kinds
/// through aggregation, and `kubectl delete -f` takes it all away again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_install_serve_the_kinds_and_uninstall() {
    let Some(c) = cluster() else { return };
    let _one_at_a_time = INSTALL.lock().await;
    let text = manifests(&[]).await;
    let applied = install(c, &text).await;
    assert!(
        applied.contains("customresourcedefinition.apiextensions.k8s.io/virtualmachines.kubevirt.io created"),
        "{applied}"
    );
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
    let deleted = uninstall(c, &text, &String::new).await;
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

/// The admission webhooks on a real apiserver: defaults and MACs filled at create, invalid
/// objects refused with field causes, a MAC never given twice and free again once its VM is
/// gone, a tenant's write to a VMI's status turned back; the VM controller keeps the VM's
/// status through the status subresource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_fill_validate_and_lease_macs() {
    let Some(c) = cluster() else { return };
    let _one_at_a_time = INSTALL.lock().await;
    let port = common::servers::free_port();
    let url = format!("https://127.0.0.1:{port}");
    let text = manifests(&["--webhook-url", &url]).await;
    install(c, &text).await;
    let _controllers = start_controllers(c, port, None).await;
    ok(c, &["create", "namespace", "k-hooks"], None).await;

    // Until the controllers have written their CA into the configurations, creates fail closed.
    let with_nic = vm_yaml("k-hooks", "nic1", "").replace(
        "        devices:\n",
        "        devices:\n          interfaces:\n          - name: default\n            masquerade: {}\n",
    ) + "      networks:\n      - name: default\n        pod: {}\n";
    let created = wait_until(Duration::from_secs(60), || async {
        let (done, _, _) = c.kubectl(&["apply", "-f", "-"], Some(&with_nic)).await;
        done
    })
    .await;
    assert!(created, "the webhooks never answered{}", c.logs());
    let vm = json_of(&ok(c, &["get", "vm", "nic1", "-n", "k-hooks", "-o", "json"], None).await);
    let mac = vm
        .pointer("/spec/template/spec/domain/devices/interfaces/0/macAddress")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    assert!(mac.starts_with("02:"), "no MAC at create: {vm}");
    assert_eq!(vm.pointer("/spec/template/spec/domain/machine/type"), Some(&Value::from("q35")), "defaults: {vm}");

    // The same MAC for another VM: refused while nic1 holds it, taken once nic1 is gone.
    let taker = vm_yaml("k-hooks", "nic2", "").replace(
        "        devices:\n",
        &format!("        devices:\n          interfaces:\n          - name: default\n            masquerade: {{}}\n            macAddress: \"{mac}\"\n"),
    ) + "      networks:\n      - name: default\n        pod: {}\n";
    let (taken, _, err) = c.kubectl(&["apply", "-f", "-"], Some(&taker)).await;
    assert!(!taken && err.contains("is already in use by k-hooks/nic1"), "{err}");
    ok(c, &["delete", "vm", "nic1", "-n", "k-hooks"], None).await;
    let freed =
        wait_until(Duration::from_secs(30), || async { c.kubectl(&["apply", "-f", "-"], Some(&taker)).await.0 }).await;
    assert!(freed, "nic1's MAC never came free");

    // Refused with the field, as the embedded API refuses it.
    let unmatched = vm_yaml("k-hooks", "bad", "")
        .replace("      - name: root\n        containerDisk", "      - name: other\n        containerDisk");
    let (refused, _, err) = c.kubectl(&["apply", "-f", "-"], Some(&unmatched)).await;
    assert!(!refused, "an unmatched disk was taken");
    assert!(
        err.contains("spec.template.spec.domain.devices.disks[0].name")
            && err.contains("does not have a matching volume"),
        "{err}"
    );

    // The VM controller runs against the apiserver: the halted VM reads Stopped.
    let stopped = wait_until(Duration::from_secs(30), || async {
        let (_, out, _) =
            c.kubectl(&["get", "vm", "nic2", "-n", "k-hooks", "-o", "jsonpath={.status.printableStatus}"], None).await;
        out == "Stopped"
    })
    .await;
    assert!(stopped, "the VM controller never wrote the VM's status");

    // A tenant's word about a VMI's phase is turned back.
    ok(c, &["create", "serviceaccount", "mallory", "-n", "k-hooks"], None).await;
    ok(
        c,
        &[
            "create",
            "rolebinding",
            "mallory-edit",
            "--clusterrole=edit",
            "--serviceaccount=k-hooks:mallory",
            "-n",
            "k-hooks",
        ],
        None,
    )
    .await;
    let token = ok(c, &["create", "token", "mallory", "-n", "k-hooks"], None).await;
    let mallory = c.kubeconfig_for("mallory", token.trim());
    let made = wait_until(Duration::from_secs(30), || async {
        c.kubectl_with(&mallory, &["apply", "-f", "-"], Some(&LONELY_VMI.replace("k-basic", "k-hooks"))).await.0
    })
    .await;
    assert!(made, "mallory could not make a VMI");
    let vmi = json_of(&ok(c, &["get", "vmi", "lonely", "-n", "k-hooks", "-o", "json"], None).await);
    assert!(
        vmi["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.contains(&Value::from("kubevirt.io/virtualMachineControllerFinalize"))),
        "{vmi}"
    );
    let (_, _, err) = c
        .kubectl_with(
            &mallory,
            &[
                "patch",
                "vmi",
                "lonely",
                "-n",
                "k-hooks",
                "--type=merge",
                "-p",
                r#"{"status":{"phase":"Running","nodeName":"host"}}"#,
            ],
            None,
        )
        .await;
    let after = json_of(&ok(c, &["get", "vmi", "lonely", "-n", "k-hooks", "-o", "json"], None).await);
    assert_ne!(after.pointer("/status/nodeName"), Some(&Value::from("host")), "{err}{after}");

    ok(c, &["delete", "namespace", "k-hooks", "--wait=false"], None).await;
    uninstall(c, &text, &String::new).await;
}

/// A VM applied with kubectl runs as KubeVirt's do: its VMI's launcher pod, asking for the
/// guest's memory plus overhead, is bound by kube-scheduler beside an ordinary pod that fills
/// one node, the node agent of the node it was bound to starts the real guest; `converge stop`
/// and `start` reach the aggregated API through kube-apiserver, whose RBAC decides who may;
/// deleting the pod stops the guest (and the VM starts a new one), and deleting the VM leaves no
/// VMI, pod or domain (kube-controller-manager's garbage collector follows the ownerReferences).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_runs_as_a_launcher_pod_and_answers_the_aggregated_api() {
    let Some(c) = cluster() else { return };
    let _one_at_a_time = INSTALL.lock().await;
    let prefix = format!("k{}-", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let _domains = common::guests::Cleanup(prefix.clone());
    let port = common::servers::free_port();
    // The aggregated API listens on a veth the test makes: Endpoints refuse loopback addresses.
    let link = TestLink::make();
    let aggregated = format!("{}:{}", TestLink::HOST_ADDRESS, common::servers::free_port());
    let text =
        manifests(&["--webhook-url", &format!("https://127.0.0.1:{port}"), "--aggregated-api-endpoint", &aggregated])
            .await;
    install(c, &text).await;
    let _controllers = start_controllers(c, port, Some(&aggregated)).await;
    let _kubelets = c.kubelet_stand_in(&[("k-node-a", "4", "8Gi"), ("k-node-b", "4", "8Gi")]).await;
    let node_a = start_node(c, "k-node-a", &prefix).await;
    let metrics_b = format!("127.0.0.1:{}", common::servers::free_port());
    let node_b = start_node_with(c, "k-node-b", &prefix, &["--metrics-listen", &metrics_b]).await;
    let admin = c.admin();
    let joined = wait_until(Duration::from_secs(60), || async {
        let nodes = admin.get("/api/v1/nodes").await;
        let ready = nodes["items"].as_array().into_iter().flatten().filter(|n| {
            n.pointer("/metadata/labels/kubevirt.io~1schedulable") == Some(&Value::from("true"))
                && n.pointer("/status/allocatable/devices.kubevirt.io~1tun") == Some(&Value::from("1k"))
        });
        ready.count() == 2
    })
    .await;
    assert!(joined, "the agents never labelled their Nodes\n{}\n{}", node_a.log(), node_b.log());

    // An ordinary pod takes most of node a's memory.
    ok(c, &["create", "namespace", "k-run"], None).await;
    // Pods wait for the namespace's default service account (kube-controller-manager makes it).
    let hog =
        wait_until(Duration::from_secs(30), || async { c.kubectl(&["apply", "-f", "-"], Some(HOG_POD)).await.0 }).await;
    assert!(hog, "the ordinary pod was never taken");
    let hog_bound = wait_until(Duration::from_secs(60), || async {
        let (_, out, _) =
            c.kubectl(&["get", "pod", "hog", "-n", "k-run", "-o", "jsonpath={.spec.nodeName}"], None).await;
        out == "k-node-a"
    })
    .await;
    assert!(hog_bound, "kube-scheduler never bound the ordinary pod{}", c.logs());

    let mut vm = common::guests::halt_vm("runner", "Always");
    vm["metadata"]["namespace"] = Value::from("k-run");
    vm["spec"]["template"]["spec"]["domain"]["resources"]["requests"]["memory"] = Value::from("1Gi");
    vm["spec"]["template"]["metadata"] = serde_json::json!({"labels": {"app": "runner"}});
    let created = wait_until(Duration::from_secs(60), || async {
        c.kubectl(&["apply", "-f", "-"], Some(&vm.to_string())).await.0
    })
    .await;
    assert!(created, "the VM was never admitted");
    let running = wait_until(Duration::from_secs(120), || async {
        vmi_json(c, "k-run", "runner").await.pointer("/status/phase") == Some(&Value::from("Running"))
    })
    .await;
    let vmi = vmi_json(c, "k-run", "runner").await;
    assert!(running, "the VMI never ran: {vmi}\n{}\n{}", node_a.log(), node_b.log());
    assert_eq!(vmi.pointer("/status/nodeName"), Some(&Value::from("k-node-b")), "{vmi}");
    let pods = launcher_pods(c, "k-run").await;
    assert_eq!(pods.len(), 1, "{pods:?}");
    let pod = &pods[0];
    assert_eq!(pod.pointer("/spec/nodeName"), Some(&Value::from("k-node-b")));
    assert_eq!(
        pod.pointer("/metadata/labels/app"),
        Some(&Value::from("runner")),
        "Services select launcher pods by the VMI's labels"
    );
    let memory =
        pod.pointer("/spec/containers/0/resources/requests/memory").and_then(Value::as_str).unwrap_or_default();
    let asked: u64 = memory.parse().unwrap_or(0);
    assert!(asked > 1 << 30, "the guest's 1Gi plus overhead: {memory}");
    let domain = format!("{prefix}k-node-b-k-run_runner");
    let libvirt = converge_engine::hypervisor::Libvirt::open("qemu:///system").expect("libvirt");
    use converge_engine::hypervisor::Hypervisor;
    let alive = |d: &str| libvirt.list().unwrap_or_default().iter().any(|x| x.name == d && x.state.is_active());
    assert!(alive(&domain), "no running domain {domain}");
    // The node serves its guest's figures, as a virt-handler does.
    let scraped = reqwest::get(format!("http://{metrics_b}/metrics")).await.expect("node metrics");
    let scraped = scraped.text().await.unwrap_or_default();
    let resident = "kubevirt_vmi_memory_resident_bytes{name=\"runner\",namespace=\"k-run\",node=\"k-node-b\"}";
    assert!(scraped.contains(resident), "{resident} in\n{scraped}");

    // The aggregated API, through kube-apiserver: discovery, then `converge stop` and `start`.
    let available = wait_until(Duration::from_secs(60), || async {
        let (_, out, _) = c
            .kubectl(
                &[
                    "get",
                    "apiservice",
                    "v1.subresources.kubevirt.io",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type=='Available')].status}",
                ],
                None,
            )
            .await;
        out == "True"
    })
    .await;
    let (_, apiservice, _) = c.kubectl(&["get", "apiservice", "v1.subresources.kubevirt.io", "-o", "yaml"], None).await;
    assert!(available, "the APIService never became available: {apiservice}{}", c.logs());
    let resources = json_of(&ok(c, &["get", "--raw", "/apis/subresources.kubevirt.io/v1"], None).await);
    assert!(resources.to_string().contains("virtualmachines/stop"), "{resources}");
    let (stopped, _, err) = converge_as(&c.kubeconfig, &["stop", "runner", "-n", "k-run"], None).await;
    assert!(stopped, "converge stop through the aggregated API: {err}");
    let halted = wait_until(Duration::from_secs(60), || async {
        vmi_json(c, "k-run", "runner").await.is_null() && !alive(&domain)
    })
    .await;
    assert!(halted, "the guest outlived its stop");
    let (started, _, err) = converge_as(&c.kubeconfig, &["start", "runner", "-n", "k-run"], None).await;
    assert!(started, "converge start: {err}");
    let again = wait_until(Duration::from_secs(120), || async {
        vmi_json(c, "k-run", "runner").await.pointer("/status/phase") == Some(&Value::from("Running"))
    })
    .await;
    assert!(again, "no guest after start: {}", vmi_json(c, "k-run", "runner").await);
    // Kubernetes RBAC decides: an editor of another namespace may not stop it.
    ok(c, &["create", "namespace", "k-elsewhere"], None).await;
    let sa = wait_until(Duration::from_secs(30), || async {
        c.kubectl(&["create", "serviceaccount", "eve", "-n", "k-elsewhere"], None).await.0
    })
    .await;
    assert!(sa, "no service account");
    ok(
        c,
        &[
            "create",
            "rolebinding",
            "eve-edit",
            "--clusterrole=edit",
            "--serviceaccount=k-elsewhere:eve",
            "-n",
            "k-elsewhere",
        ],
        None,
    )
    .await;
    let token = ok(c, &["create", "token", "eve", "-n", "k-elsewhere"], None).await;
    let eve = c.kubeconfig_for("eve", token.trim());
    let (stopped, _, err) = converge_as(&eve, &["stop", "runner", "-n", "k-run"], None).await;
    assert!(!stopped && err.contains("forbidden"), "{err}");
    // Straight to the aggregated server, claiming to be an admin: no front-proxy certificate,
    // no connection.
    let forged = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("client")
        .put(format!(
            "https://{aggregated}/apis/subresources.kubevirt.io/v1/namespaces/k-run/virtualmachines/runner/stop"
        ))
        .header("X-Remote-User", "admin")
        .header("X-Remote-Group", "system:masters")
        .send()
        .await;
    assert!(forged.is_err(), "the aggregated server answered without the front proxy's certificate: {forged:?}");
    let vmi = vmi_json(c, "k-run", "runner").await;
    assert_eq!(vmi.pointer("/status/phase"), Some(&Value::from("Running")), "{vmi}");
    the_aggregated_api_reaches_a_guest(c, &eve, &|| format!("{}\n{}", node_a.log(), node_b.log())).await;

    // The pod goes: so does the guest, and the VM (Always) starts another.
    let first_uid = vmi["metadata"]["uid"].as_str().unwrap_or_default().to_string();
    let pods = launcher_pods(c, "k-run").await;
    let live: Vec<&Value> = pods.iter().filter(|p| p.pointer("/metadata/deletionTimestamp").is_none()).collect();
    let pod_name = live.first().and_then(|p| p["metadata"]["name"].as_str()).unwrap_or_default().to_string();
    ok(c, &["delete", "pod", &pod_name, "-n", "k-run", "--wait=false"], None).await;
    let replaced = wait_until(Duration::from_secs(120), || async {
        let v = vmi_json(c, "k-run", "runner").await;
        v["metadata"]["uid"].as_str().is_some_and(|u| u != first_uid)
            && v.pointer("/status/phase") == Some(&Value::from("Running"))
    })
    .await;
    assert!(replaced, "no new guest after the pod went: {}\n{}", vmi_json(c, "k-run", "runner").await, node_b.log());

    // The VM goes: its VMI, pod and domain follow.
    ok(c, &["delete", "vm", "runner", "-n", "k-run", "--wait=false"], None).await;
    let cleaned = wait_until(Duration::from_secs(120), || async {
        vmi_json(c, "k-run", "runner").await.is_null() && launcher_pods(c, "k-run").await.is_empty() && !alive(&domain)
    })
    .await;
    assert!(cleaned, "left behind: {} {:?}", vmi_json(c, "k-run", "runner").await, launcher_pods(c, "k-run").await);

    // Uninstalled with a guest running: the CRDs' deletion takes the VMIs, the agents their
    // domains; nothing of Converge's is left on the nodes.
    let mut last = vm.clone();
    last["metadata"]["name"] = Value::from("last");
    ok(c, &["apply", "-f", "-"], Some(&last.to_string())).await;
    let up = wait_until(Duration::from_secs(120), || async {
        vmi_json(c, "k-run", "last").await.pointer("/status/phase") == Some(&Value::from("Running"))
    })
    .await;
    assert!(up, "the last guest never ran: {}", vmi_json(c, "k-run", "last").await);
    ok(c, &["delete", "namespace", "k-elsewhere", "--wait=false"], None).await;
    uninstall(c, &text, &|| format!("{}\n{}", node_a.log(), node_b.log())).await;
    let ours = || libvirt.list().unwrap_or_default().into_iter().filter(|d| d.name.starts_with(&prefix)).count();
    let empty = wait_until(Duration::from_secs(60), || async { ours() == 0 }).await;
    assert!(empty, "domains left after uninstall: {}", ours());
    ok(c, &["delete", "namespace", "k-run", "--wait=false"], None).await;
    drop(link);
    for node in ["k-node-a", "k-node-b"] {
        ok(c, &["delete", "node", node, "--wait=false"], None).await;
    }
}

/// `converge` with `args` against the cluster as `kubeconfig`'s user.
async fn converge_as(kubeconfig: &std::path::Path, args: &[&str], input: Option<&str>) -> (bool, String, String) {
    common::run_converge(kubeconfig, args, input).await
}

/// Console, VNC, pause and unpause of a guest through kube-apiserver's aggregation layer: the
/// controllers relay each to the agent of the guest's node, whose serving certificate they
/// signed through the cluster's CSR API; `eve`, an editor elsewhere, gets none of it.
async fn the_aggregated_api_reaches_a_guest(c: &RealCluster, eve: &std::path::Path, logs: &dyn Fn() -> String) {
    let signed = json_of(&ok(c, &["get", "csr", "-o", "json"], None).await);
    let ours: Vec<&Value> = signed["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r.pointer("/spec/signerName") == Some(&Value::from("converge.dev/node-serving")))
        .filter(|r| r.pointer("/status/certificate").is_some())
        .collect();
    assert!(ours.len() >= 2, "each agent's certificate came through the CSR API: {signed}");
    let mut spec = common::guests::kernel_vmi_spec();
    spec["domain"]["devices"]["autoattachGraphicsDevice"] = Value::from(true);
    spec["domain"]["devices"]["autoattachPodInterface"] = Value::from(false);
    let vmi = serde_json::json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "talker", "namespace": "k-run"}, "spec": spec});
    ok(c, &["apply", "-f", "-"], Some(&vmi.to_string())).await;
    let running = wait_until(Duration::from_secs(120), || async {
        vmi_json(c, "k-run", "talker").await.pointer("/status/phase") == Some(&Value::from("Running"))
    })
    .await;
    assert!(running, "the talker never ran: {}\n{}", vmi_json(c, "k-run", "talker").await, logs());
    let admin = &c.kubeconfig;
    // The guest's shell, once it has booted, answers through kube-apiserver.
    let said = std::cell::RefCell::new(String::new());
    let answered = wait_until(Duration::from_secs(120), || async {
        let (_, out, err) =
            converge_as(admin, &["console", "talker", "-n", "k-run"], Some("echo console-$((6*7))\n")).await;
        *said.borrow_mut() = format!("{out}{err}");
        out.contains("console-42")
    })
    .await;
    assert!(answered, "converge console through the aggregated API: {:?}\n{}", said.borrow(), logs());
    // `converge vnc` serves a local port: a viewer's first read is the guest's RFB banner.
    let mut viewer = tokio::process::Command::new(env!("CARGO_BIN_EXE_converge"))
        .args(["vnc", "talker", "-n", "k-run", "--port", "0", "--kubeconfig"])
        .arg(admin)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("converge vnc");
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let stdout = viewer.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = lines.next_line().await.ok().flatten().unwrap_or_default();
    let addr = first.rsplit(' ').next().unwrap_or_default().to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.expect("the local VNC port");
    let mut banner = [0u8; 12];
    let read = tokio::time::timeout(Duration::from_secs(20), tcp.read_exact(&mut banner)).await;
    assert!(read.is_ok_and(|r| r.is_ok()) && banner.starts_with(b"RFB "), "{:?}", String::from_utf8_lossy(&banner));
    drop((lines, viewer));
    let paused_is = |want: bool| async move {
        let v = vmi_json(c, "k-run", "talker").await;
        let paused = v
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Paused" && c["status"] == "True"));
        paused == want
    };
    for (verb, paused) in [("pause", true), ("unpause", false)] {
        let (done, _, err) = converge_as(admin, &[verb, "talker", "-n", "k-run"], None).await;
        assert!(done, "converge {verb}: {err}");
        assert!(wait_until(Duration::from_secs(60), || paused_is(paused)).await, "{verb}: {}", logs());
    }
    for verb in ["console", "pause"] {
        let (done, _, err) = converge_as(eve, &[verb, "talker", "-n", "k-run"], None).await;
        assert!(!done && err.contains("forbidden"), "eve's {verb}: {err}");
    }
    eve_may_not_be_a_node(c, eve).await;
    ok(c, &["delete", "vmi", "talker", "-n", "k-run", "--wait=false"], None).await;
}

/// Eve, allowed to ask for certificates but not to change Nodes, asks for node a's serving
/// certificate (whose key would let her answer for node a): the controllers deny it.
async fn eve_may_not_be_a_node(c: &RealCluster, eve: &std::path::Path) {
    ok(c, &["create", "clusterrole", "csr-asker", "--verb=create,get", "--resource=certificatesigningrequests"], None)
        .await;
    ok(
        c,
        &["create", "clusterrolebinding", "eve-asks", "--clusterrole=csr-asker", "--serviceaccount=k-elsewhere:eve"],
        None,
    )
    .await;
    let request = std::process::Command::new("openssl")
        .args(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-keyout", "/dev/null", "-subj", "/CN=system:node:k-node-a"])
        .output()
        .expect("openssl req");
    assert!(request.status.success(), "{}", String::from_utf8_lossy(&request.stderr));
    use base64::Engine;
    let csr = serde_json::json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": "eve-is-node-a"},
        "spec": {"request": base64::engine::general_purpose::STANDARD.encode(&request.stdout),
                 "signerName": "converge.dev/node-serving", "usages": ["digital signature", "server auth"]}});
    let (made, _, err) = c.kubectl_with(eve, &["create", "-f", "-"], Some(&csr.to_string())).await;
    assert!(made, "eve may ask: {err}");
    let denied = wait_until(Duration::from_secs(30), || async {
        let (_, out, _) = c.kubectl(&["get", "csr", "eve-is-node-a", "-o", "json"], None).await;
        let csr: Value = serde_json::from_str(&out).unwrap_or_default();
        let refused = csr.pointer("/status/conditions/0/type") == Some(&Value::from("Denied"));
        refused && csr.pointer("/status/certificate").is_none()
    })
    .await;
    let (_, out, _) = c.kubectl(&["get", "csr", "eve-is-node-a", "-o", "yaml"], None).await;
    assert!(denied && out.contains("may not update Node"), "{out}");
    ok(c, &["delete", "csr", "eve-is-node-a"], None).await;
    ok(c, &["delete", "clusterrolebinding", "eve-asks"], None).await;
    ok(c, &["delete", "clusterrole", "csr-asker"], None).await;
}

/// `converge manifests --image`: Converge's own workloads in the cluster. The controllers'
/// Deployment and the node agents' DaemonSet are taken and their pods bound by kube-scheduler
/// (no kubelet runs them here), the webhooks and APIServices point at the Deployment's
/// Service, and each service account may do its work and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_with_an_image_run_converge_in_the_cluster() {
    let Some(c) = cluster() else { return };
    let _one_at_a_time = INSTALL.lock().await;
    let text = manifests(&["--image", "registry.local/converge:test", "--use-emulation"]).await;
    let _kubelets = c.kubelet_stand_in(&[("k-node-c", "4", "8Gi"), ("k-node-d", "4", "8Gi")]).await;
    ok(c, &["apply", "-f", "-"], Some(&text)).await;
    let bound = wait_until(Duration::from_secs(60), || async {
        let (_, out, _) = c
            .kubectl(
                &[
                    "get",
                    "pods",
                    "-n",
                    "converge-system",
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.labels.app\\.kubernetes\\.io/name}={.spec.nodeName} {end}",
                ],
                None,
            )
            .await;
        let bound: Vec<&str> = out.split_whitespace().filter(|p| !p.ends_with('=')).collect();
        bound.iter().filter(|p| p.starts_with("converge-node=")).count() == 2
            && bound.iter().filter(|p| p.starts_with("converge-controllers=")).count() == 1
    })
    .await;
    let (_, pods, _) = c.kubectl(&["get", "pods", "-n", "converge-system", "-o", "wide"], None).await;
    assert!(bound, "the workloads' pods were not all bound: {pods}");
    let hook = json_of(&ok(c, &["get", "mutatingwebhookconfiguration", "converge-webhooks", "-o", "json"], None).await);
    assert_eq!(hook.pointer("/webhooks/0/clientConfig/service/name"), Some(&Value::from("converge-api")), "{hook}");
    let api = json_of(&ok(c, &["get", "apiservice", "v1.subresources.kubevirt.io", "-o", "json"], None).await);
    assert_eq!(api.pointer("/spec/service/name"), Some(&Value::from("converge-api")));
    let may = |who: &'static str, verb: &'static str, what: &'static str| async move {
        let (_, out, _) = c
            .kubectl(
                &["auth", "can-i", verb, what, "-A", &format!("--as=system:serviceaccount:converge-system:{who}")],
                None,
            )
            .await;
        out.trim() == "yes"
    };
    assert!(may("converge-controllers", "create", "pods").await);
    assert!(may("converge-controllers", "delete", "virtualmachineinstances.kubevirt.io").await);
    assert!(may("converge-controllers", "create", "subjectaccessreviews.authorization.k8s.io").await);
    assert!(!may("converge-controllers", "delete", "nodes").await);
    assert!(may("converge-node", "update", "virtualmachineinstances.kubevirt.io").await);
    assert!(may("converge-node", "patch", "nodes").await);
    assert!(!may("converge-node", "delete", "virtualmachines.kubevirt.io").await);
    assert!(!may("converge-node", "create", "pods").await);

    // The workloads' pods are finished by the stand-in kubelet: it stays until all is gone.
    uninstall(c, &text, &String::new).await;
    for node in ["k-node-c", "k-node-d"] {
        ok(c, &["delete", "node", node, "--wait=false"], None).await;
    }
}

const HOG_POD: &str = "apiVersion: v1
kind: Pod
metadata: {name: hog, namespace: k-run}
spec:
  nodeSelector: {kubernetes.io/hostname: k-node-a}
  containers:
  - name: hog
    image: registry.k8s.io/pause:3.10
    resources: {requests: {memory: 7Gi, cpu: 100m}}
";

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
