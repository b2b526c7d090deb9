use super::*;

fn dv(source: Value) -> Value {
    json!({"metadata": {"name": "disk", "namespace": "ns", "uid": "dv-1"},
        "spec": {"source": source, "storage": {"resources": {"requests": {"storage": "1Gi"}}}}})
}

fn pvc(bound: bool, pod_phase: &str) -> Value {
    json!({"metadata": {"annotations": {ANN_POD_PHASE: pod_phase, ANN_FAILURE: "disk full"}},
        "status": {"phase": if bound { "Bound" } else { "Pending" }}})
}

fn condition<'a>(status: &'a Value, kind: &str) -> &'a Value {
    status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == kind).unwrap()
}

/// Every state a DataVolume can be seen in, and the phase, action and Running condition CDI
/// would show for it.
#[test]
fn phases_follow_the_claim_and_the_job() {
    let http = dv(json!({"http": {"url": "http://example.org/a.img"}}));
    let upload = dv(json!({"upload": {}}));
    let clone = dv(json!({"pvc": {"namespace": "golden", "name": "base"}}));
    let (unbound, filling, done, failed) =
        (pvc(false, "Pending"), pvc(true, "Running"), pvc(true, "Succeeded"), pvc(true, "Failed"));
    let running = Some(JobView { running: true, progress: 0.4217, last_error: None });
    let retrying = Some(JobView { running: false, progress: 0.1, last_error: Some("GET: 503".into()) });
    #[allow(clippy::type_complexity)]
    let table: Vec<(&Value, Option<&Value>, bool, Option<JobView>, &str, bool, bool, &str)> = vec![
        // (dv, claim, waits for consumer, job) → (phase, create claim, start job, Running reason)
        (&http, None, false, None, "Pending", true, false, ""),
        (&http, Some(&unbound), false, None, "Pending", false, false, ""),
        (&http, Some(&unbound), true, None, "WaitForFirstConsumer", false, false, ""),
        (&http, Some(&filling), false, None, "ImportScheduled", false, true, ""),
        (&http, Some(&filling), false, running.clone(), "ImportInProgress", false, false, ""),
        (&http, Some(&filling), false, retrying.clone(), "ImportInProgress", false, false, "Error"),
        (&http, Some(&done), false, None, "Succeeded", false, false, "Completed"),
        (&http, Some(&failed), false, None, "Failed", false, false, "Error"),
        (&upload, Some(&filling), false, None, "UploadReady", false, true, "Pod is running"),
        (&upload, Some(&done), false, None, "Succeeded", false, false, "Completed"),
        (&clone, Some(&filling), false, None, "CloneScheduled", false, true, ""),
        (&clone, Some(&filling), false, running, "CloneInProgress", false, false, ""),
    ];
    for (i, (d, claim, wffc, job, phase, create, start, running_reason)) in table.into_iter().enumerate() {
        let source = source_of(d).unwrap();
        let seen = Observed { pvc: claim, wait_for_consumer: wffc, job, ..Observed::default() };
        let out = decide(d, &source, &seen, "2026-01-01T00:00:00Z");
        assert_eq!(out.status["phase"], phase, "row {i}");
        assert_eq!((out.create_claim, out.start_job), (create, start), "row {i}");
        assert_eq!(condition(&out.status, "Running")["reason"], running_reason, "row {i}");
        assert_eq!(
            condition(&out.status, "Ready")["status"],
            if phase == "Succeeded" { "True" } else { "False" },
            "row {i}"
        );
    }
    let seen = Observed {
        pvc: Some(&filling),
        job: Some(JobView { running: true, progress: 0.4217, last_error: None }),
        ..Observed::default()
    };
    assert_eq!(decide(&http, &Source::Http(json!({})), &seen, "t").status["progress"], "42.17%");
    let seen = Observed { pvc: Some(&done), ..Observed::default() };
    assert_eq!(decide(&http, &Source::Http(json!({})), &seen, "t").status["progress"], "100.0%");
    let seen = Observed { pvc: Some(&failed), ..Observed::default() };
    assert_eq!(
        condition(&decide(&http, &Source::Http(json!({})), &seen, "t").status, "Running")["message"],
        "disk full"
    );
}

#[test]
fn unauthorized_clones_fail_and_missing_sources_wait() {
    let clone = dv(json!({"pvc": {"namespace": "golden", "name": "base"}}));
    let filling = pvc(true, "Pending");
    let blocked = |reason: &str| Observed {
        pvc: Some(&filling),
        blocked: Some((reason.to_string(), "why".to_string())),
        ..Observed::default()
    };
    let src = source_of(&clone).unwrap();
    let out = decide(&clone, &src, &blocked("CloneUnauthorized"), "t");
    assert_eq!((out.status["phase"].as_str(), out.start_job), (Some("Failed"), false));
    let out = decide(&clone, &src, &blocked("CloneSourceNotFound"), "t");
    assert_eq!(out.status["phase"], "CloneScheduled");
}

#[test]
fn sources_and_claims_read_like_cdi() {
    let by_ref = json!({"metadata": {"name": "root", "namespace": "vms", "uid": "u"},
        "spec": {"sourceRef": {"kind": "DataSource", "name": "debian", "namespace": "golden"},
                 "storage": {"resources": {"requests": {"storage": "2Gi"}}}}});
    assert_eq!(source_of(&by_ref).unwrap(), Source::Ref { namespace: "golden".into(), name: "debian".into() });
    let profile = json!({"status": {"claimPropertySets": [{"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem"}, {"accessModes": ["ReadWriteOnce"], "volumeMode": "Block"}]}});
    let claim = claim_for(&by_ref, Some(&profile)).unwrap();
    assert_eq!(claim["spec"]["accessModes"], json!(["ReadWriteOnce"]));
    assert_eq!(claim["spec"]["volumeMode"], "Filesystem");
    assert_eq!(claim["metadata"]["ownerReferences"][0]["kind"], "DataVolume");
    let mut block = by_ref.clone();
    block["spec"]["storage"]["volumeMode"] = json!("Block");
    assert_eq!(claim_for(&block, Some(&profile)).unwrap()["spec"]["volumeMode"], "Block");
    for (bad, want) in [
        (json!({"source": {"http": {}}}), "url is required"),
        (json!({"source": {"gcs": {"url": "gs://x"}}}), "not supported"),
        (json!({"source": {"http": {"url": "u"}, "blank": {}}}), "exactly one"),
        (json!({}), "is required"),
    ] {
        let err = source_of(&json!({"metadata": {"namespace": "n"}, "spec": bad})).unwrap_err();
        assert!(err.contains(want), "{err}");
    }
    let no_size = json!({"metadata": {"name": "x"}, "spec": {"source": {"blank": {}}, "storage": {}}});
    assert!(claim_for(&no_size, None).unwrap_err().contains("size is required"));
}
