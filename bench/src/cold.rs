//! P5.cold: `converge serve` (the release binary, node included) from spawn to its first
//! `/readyz` 200, on an empty data dir and again after `objects` VMs were stored in it.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;

/// (label, ms) for the empty start and the start with `objects` stored.
pub async fn starts(converge: &Path, objects: usize) -> Result<Vec<(String, f64)>> {
    let converge = std::fs::canonicalize(converge).context("build it first: cargo build --release")?;
    let dir = tempfile::Builder::new().prefix("converge-cold").tempdir_in("/var/tmp")?;
    let data = dir.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    // Readiness is polled before the CA exists on disk: the poller trusts any certificate (loopback).
    let http = reqwest::Client::builder().danger_accept_invalid_certs(true).build()?;
    let empty = start(&converge, &data, port, &http).await?;
    let (serve, ms_empty) = empty;
    fill(&http, port, &data, objects).await?;
    stop(serve).await?;
    let (serve, ms_full) = start(&converge, &data, port, &http).await?;
    stop(serve).await?;
    Ok(vec![("empty".into(), ms_empty), (format!("{objects}_objects"), ms_full)])
}

async fn start(
    converge: &Path,
    data: &Path,
    port: u16,
    http: &reqwest::Client,
) -> Result<(tokio::process::Child, f64)> {
    let t = Instant::now();
    let child = tokio::process::Command::new(converge)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--node-name", "cold-node", "--pod-network", "none"])
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let url = format!("https://127.0.0.1:{port}/readyz");
    while t.elapsed() < Duration::from_secs(60) {
        if let Ok(r) = http.get(&url).send().await {
            if r.status().is_success() {
                return Ok((child, t.elapsed().as_secs_f64() * 1000.0));
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    anyhow::bail!("converge serve not ready in 60 s")
}

async fn stop(mut serve: tokio::process::Child) -> Result<()> {
    if let Some(pid) = serve.id() {
        std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    }
    if tokio::time::timeout(Duration::from_secs(30), serve.wait()).await.is_err() {
        serve.kill().await?;
    }
    Ok(())
}

async fn fill(http: &reqwest::Client, port: u16, data: &Path, objects: usize) -> Result<()> {
    let token = std::fs::read_to_string(data.join("admin.token"))?.trim().to_string();
    let url = format!("https://127.0.0.1:{port}{}", super::VMS);
    let results: Vec<Result<u16>> = futures::stream::iter(0..objects)
        .map(|i| {
            let (http, url, token) = (http.clone(), url.clone(), token.clone());
            async move {
                let r = http.post(&url).bearer_auth(&token).json(&super::vm(&format!("cold-{i:05}"))).send().await?;
                Ok(r.status().as_u16())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for r in results {
        anyhow::ensure!(r? == 201, "cold start fill: a create failed");
    }
    Ok(())
}
