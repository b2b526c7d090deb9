//! `converge image-upload`: virtctl's image-upload against CDI's upload path — a DataVolume with
//! an upload source, a token, then the file streamed to the upload proxy with a progress bar.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::client::Client;

pub struct UploadArgs {
    pub namespace: String,
    pub name: String,
    pub image_path: std::path::PathBuf,
    pub size: Option<String>,
    pub storage_class: Option<String>,
    pub block: bool,
    pub no_create: bool,
    pub wait: Duration,
    pub archive: bool,
}

fn dv_path(ns: &str, name: &str) -> String {
    format!("/apis/cdi.kubevirt.io/v1beta1/namespaces/{ns}/datavolumes/{name}")
}

/// The DataVolume virtctl creates for an upload.
pub fn upload_datavolume(args: &UploadArgs) -> Result<Value> {
    let size = args.size.as_deref().context("--size is required to create the DataVolume")?;
    let mut storage = json!({"resources": {"requests": {"storage": size}}});
    if let Some(c) = &args.storage_class {
        storage["storageClassName"] = json!(c);
    }
    if args.block {
        storage["volumeMode"] = json!("Block");
    }
    let mut dv = json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": {"name": args.name, "namespace": args.namespace},
        "spec": {"source": {"upload": {}}, "storage": storage},
    });
    if args.archive {
        dv["spec"]["contentType"] = json!("archive");
    }
    Ok(dv)
}

async fn wait_for_phase(api: &Client, args: &UploadArgs, wanted: &[&str]) -> Result<Value> {
    let deadline = Instant::now() + args.wait;
    loop {
        if let Some(dv) = api.get_json(&dv_path(&args.namespace, &args.name)).await? {
            let phase = dv.pointer("/status/phase").and_then(Value::as_str).unwrap_or("");
            if wanted.contains(&phase) {
                return Ok(dv);
            }
            if phase == "Failed" {
                let why = converge_engine::storage::datavolume::running_message(&dv).unwrap_or("");
                bail!("DataVolume {} failed: {why}", args.name);
            }
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for DataVolume {} to reach {}", args.name, wanted.join(" or "));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub async fn image_upload(api: &Client, args: UploadArgs) -> Result<()> {
    let meta = tokio::fs::metadata(&args.image_path)
        .await
        .with_context(|| format!("reading {}", args.image_path.display()))?;
    if !args.no_create {
        api.post_json(
            &format!("/apis/cdi.kubevirt.io/v1beta1/namespaces/{}/datavolumes", args.namespace),
            &upload_datavolume(&args)?,
        )
        .await
        .context("creating the DataVolume")?;
        eprintln!("DataVolume {}/{} created", args.namespace, args.name);
    }
    eprintln!("Waiting for PVC {} upload pod to be ready...", args.name);
    wait_for_phase(api, &args, &["UploadReady"]).await?;
    let request = json!({
        "apiVersion": "upload.cdi.kubevirt.io/v1beta1",
        "kind": "UploadTokenRequest",
        "metadata": {"name": format!("token-for-{}", args.name), "namespace": args.namespace},
        "spec": {"pvcName": args.name},
    });
    let token = api
        .post_json(
            &format!("/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{}/uploadtokenrequests", args.namespace),
            &request,
        )
        .await?
        .pointer("/status/token")
        .and_then(Value::as_str)
        .map(str::to_string)
        .context("the server returned no upload token")?;

    let total = meta.len();
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bytes}/{total_bytes} [{bar:40}] {percent}% {binary_bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let file = tokio::fs::File::open(&args.image_path).await?;
    let counted = bar.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).inspect(move |chunk| {
        if let Ok(c) = chunk {
            counted.inc(c.len() as u64);
        }
    });
    eprintln!("Uploading {} to {}/v1beta1/upload", args.image_path.display(), api.server);
    let resp = api
        .http()
        .post(format!("{}/v1beta1/upload", api.server))
        .bearer_auth(token)
        .header("content-length", total)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .context("uploading")?;
    bar.finish();
    let status = resp.status();
    if !status.is_success() {
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        bail!("upload failed ({status}): {}", body.get("message").and_then(Value::as_str).unwrap_or(""));
    }
    eprintln!("Uploading data completed successfully, waiting for processing to complete, you can hit ctrl-c without interrupting the progress");
    wait_for_phase(api, &args, &["Succeeded"]).await?;
    eprintln!("Processing completed successfully");
    eprintln!("Uploading {} completed successfully", args.image_path.display());
    Ok(())
}
