//! virtctl's verbs: start, stop, restart, pause, unpause, console, vnc, domxml — reading the
//! kubeconfig as kubectl does ($KUBECONFIG, else ~/.kube/config, else the data dir's).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};

use crate::client::Client;

const ESCAPE: u8 = 0x1d; // Ctrl-]

pub fn kubeconfig_path(explicit: Option<PathBuf>, data_dir: Option<PathBuf>) -> PathBuf {
    if let Some(p) = explicit {
        return p;
    }
    if let Some(p) = std::env::var_os("KUBECONFIG").map(PathBuf::from) {
        return p;
    }
    if let Some(home) = std::env::var_os("HOME").map(PathBuf::from) {
        let p = home.join(".kube/config");
        if p.is_file() && data_dir.is_none() {
            return p;
        }
    }
    data_dir.unwrap_or_else(crate::config::default_data_dir).join("kubeconfig")
}

pub fn vm_path(ns: &str, name: &str, action: &str) -> String {
    format!("/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}/{action}")
}

pub fn vmi_path(ns: &str, name: &str, action: &str) -> String {
    format!("/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}/{action}")
}

pub async fn start(api: &Client, ns: &str, name: &str, paused: bool, dry_run: bool) -> Result<()> {
    let mut body = json!({});
    if paused {
        body["paused"] = json!(true);
    }
    if dry_run {
        body["dryRun"] = json!(["All"]);
    }
    api.put(&vm_path(ns, name, "start"), &body).await?;
    println!("VM {name} was scheduled to start");
    Ok(())
}

pub struct ExposeSpec {
    pub name: String,
    pub port: u16,
    pub target_port: Option<u16>,
    pub service_type: String,
    pub protocol: String,
}

/// virtctl expose: a Service selecting the VMI by the labels its VM's template (or the VMI)
/// carries.
pub async fn expose(api: &Client, ns: &str, kind: &str, name: &str, spec: &ExposeSpec) -> Result<()> {
    let (path, labels_at) = match kind {
        "vm" | "virtualmachine" => {
            (format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}"), "/spec/template/metadata/labels")
        }
        "vmi" | "virtualmachineinstance" => {
            (format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}"), "/metadata/labels")
        }
        other => anyhow::bail!("cannot expose {other:?}: expose takes `vm NAME` or `vmi NAME`"),
    };
    let obj = api.get_json(&path).await?.ok_or_else(|| anyhow::anyhow!("{kind} {ns}/{name} not found"))?;
    let selector = obj.pointer(labels_at).filter(|l| l.as_object().is_some_and(|m| !m.is_empty())).cloned();
    let Some(selector) = selector else {
        anyhow::bail!("cannot expose {kind} {name} without any label: add labels to select it by")
    };
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": spec.name, "namespace": ns},
        "spec": {"type": spec.service_type, "selector": selector, "ports": [{
            "port": spec.port, "protocol": spec.protocol.to_uppercase(),
            "targetPort": spec.target_port.unwrap_or(spec.port)}]},
    });
    let created = api.post_json(&format!("/api/v1/namespaces/{ns}/services"), &service).await?;
    let node_port = created.pointer("/spec/ports/0/nodePort").and_then(Value::as_u64);
    match node_port {
        Some(p) => println!("Service {} successfully exposed for {kind} {name} (node port {p})", spec.name),
        None => println!("Service {} successfully exposed for {kind} {name}", spec.name),
    }
    Ok(())
}

pub async fn stop(api: &Client, ns: &str, name: &str, grace: Option<i64>, force: bool, dry_run: bool) -> Result<()> {
    let mut body = json!({});
    if let Some(g) = grace.or(force.then_some(0)) {
        body["gracePeriod"] = json!(g);
    }
    if dry_run {
        body["dryRun"] = json!(["All"]);
    }
    api.put(&vm_path(ns, name, "stop"), &body).await?;
    println!("VM {name} was scheduled to stop");
    Ok(())
}

pub async fn restart(api: &Client, ns: &str, name: &str, grace: Option<i64>, dry_run: bool) -> Result<()> {
    let mut body = json!({});
    if let Some(g) = grace {
        body["gracePeriodSeconds"] = json!(g);
    }
    if dry_run {
        body["dryRun"] = json!(["All"]);
    }
    api.put(&vm_path(ns, name, "restart"), &body).await?;
    println!("VM {name} was scheduled to restart");
    Ok(())
}

pub async fn migrate(api: &Client, ns: &str, name: &str, dry_run: bool) -> Result<()> {
    let body = if dry_run { json!({"dryRun": ["All"]}) } else { json!({}) };
    api.put(&vm_path(ns, name, "migrate"), &body).await?;
    println!("VM {name} was scheduled to migrate");
    Ok(())
}

/// pause / unpause / softreboot a VMI (virtctl's `pause vm` targets the VM's VMI of that name).
pub async fn vmi_action(api: &Client, ns: &str, name: &str, action: &str) -> Result<()> {
    api.put(&vmi_path(ns, name, action), &json!({})).await?;
    let done = match action {
        "pause" => "paused",
        "unpause" => "unpaused",
        _ => "soft rebooted",
    };
    println!("VMI {name} was scheduled to be {done}");
    Ok(())
}

pub async fn domxml(api: &Client, ns: &str, name: &str) -> Result<()> {
    let xml = api.get_text(&format!("/converge/v1/namespaces/{ns}/virtualmachineinstances/{name}/domain")).await?;
    print!("{xml}");
    Ok(())
}

/// Prints a VMI's console log so far (the last `tail` lines when given).
pub async fn console_log(api: &Client, ns: &str, name: &str, tail: Option<u64>) -> Result<()> {
    let query = tail.map(|n| format!("?tailLines={n}")).unwrap_or_default();
    let path = format!("/converge/v1/namespaces/{ns}/virtualmachineinstances/{name}/consolelog{query}");
    print!("{}", api.get_text(&path).await?);
    Ok(())
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A `plain.kubevirt.io` websocket to `path`, over TLS checked against the kubeconfig's CA.
pub async fn websocket(api: &Client, path: &str) -> Result<Socket> {
    let url = format!("{}{path}", api.server).replacen("https://", "wss://", 1);
    let uri: tungstenite::http::Uri = url.parse().context("server URL")?;
    let host = uri.host().context("server URL has no host")?.trim_matches(['[', ']']).to_string();
    let port = uri.port_u16().unwrap_or(443);
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = &api.ca_pem {
        for cert in rustls_pemfile_certs(pem)? {
            roots.add(cert).context("adding the kubeconfig's CA")?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp =
        tokio::net::TcpStream::connect((host.as_str(), port)).await.with_context(|| format!("connecting to {url}"))?;
    let server_name = rustls::pki_types::ServerName::try_from(host.clone()).context("server name")?;
    let stream =
        tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(server_name, tcp).await.context("TLS handshake")?;
    let mut request = url.as_str().into_client_request()?;
    let headers = request.headers_mut();
    headers.insert("Sec-WebSocket-Protocol", "plain.kubevirt.io".parse()?);
    headers.insert("Authorization", format!("Bearer {}", api.token).parse()?);
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).to_string()).unwrap_or_default();
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
                .unwrap_or(body);
            bail!("{}: {message}", resp.status())
        }
        Err(e) => Err(e.into()),
    }
}

fn rustls_pemfile_certs(pem: &[u8]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().context("reading the CA PEM")
}

/// Puts the terminal in raw mode while alive (when stdin is a terminal).
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn enter() -> RawTerminal {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a zeroed struct they fill; restored in Drop.
        unsafe {
            if libc::isatty(0) != 1 {
                return RawTerminal(None);
            }
            let mut original: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut original) != 0 {
                return RawTerminal(None);
            }
            let mut raw = original;
            libc::cfmakeraw(&mut raw);
            libc::tcsetattr(0, libc::TCSANOW, &raw);
            RawTerminal(Some(original))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(original) = self.0 {
            // SAFETY: restores the settings read in `enter`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &original) };
        }
    }
}

pub async fn console(api: &Client, ns: &str, name: &str) -> Result<()> {
    let socket = websocket(api, &vmi_path(ns, name, "console")).await?;
    eprintln!("Successfully connected to {name} console. The escape sequence is ^]");
    let (mut sink, mut source) = socket.split();
    let _raw = RawTerminal::enter();
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let mut buf = [0u8; 4096];
    let mut stdin_open = true;
    loop {
        tokio::select! {
            read = stdin.read(&mut buf), if stdin_open => match read {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    let chunk = &buf[..n];
                    let (data, escape) = match chunk.iter().position(|b| *b == ESCAPE) {
                        Some(i) => (&chunk[..i], true),
                        None => (chunk, false),
                    };
                    if !data.is_empty() {
                        sink.send(Message::binary(data.to_vec())).await?;
                    }
                    if escape {
                        let _ = sink.send(Message::Close(None)).await;
                        break;
                    }
                }
            },
            msg = source.next() => match msg {
                Some(Ok(Message::Binary(b))) => { stdout.write_all(&b).await?; stdout.flush().await?; }
                Some(Ok(Message::Text(t))) => { stdout.write_all(t.as_bytes()).await?; stdout.flush().await?; }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(e)) => { drop(_raw); bail!("console: {e}") }
                Some(Ok(_)) => {}
            },
        }
    }
    drop(_raw);
    let _ = std::io::stderr().write_all(b"\r\n");
    Ok(())
}

/// Serves VNC on a local port: each viewer connection gets its own websocket to the VMI.
pub async fn vnc(api: Arc<Client>, ns: String, name: String, address: &str, port: u16) -> Result<()> {
    let listener = tokio::net::TcpListener::bind((address, port))
        .await
        .with_context(|| format!("listening on {address}:{port}"))?;
    let local = listener.local_addr()?;
    // Fail early if the VMI has no VNC to give.
    drop(websocket(&api, &vmi_path(&ns, &name, "vnc")).await?);
    // A reader that took the address and closed our stdout must not end the serving.
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "VNC of {ns}/{name} is served on {local}");
    let _ = writeln!(
        out,
        "connect a viewer to it, e.g. `vncviewer {}::{}` or `remote-viewer vnc://{local}`",
        local.ip(),
        local.port()
    );
    let _ = out.flush();
    loop {
        let (mut tcp, _) = listener.accept().await?;
        let (api, ns, name) = (Arc::clone(&api), ns.clone(), name.clone());
        tokio::spawn(async move {
            let socket = match websocket(&api, &vmi_path(&ns, &name, "vnc")).await {
                Ok(socket) => socket,
                Err(e) => {
                    eprintln!("vnc: {e:#}");
                    return;
                }
            };
            let (mut sink, mut source) = socket.split();
            let (mut rd, mut wr) = tcp.split();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                tokio::select! {
                    read = rd.read(&mut buf) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() { break },
                    },
                    msg = source.next() => match msg {
                        Some(Ok(Message::Binary(b))) => if wr.write_all(&b).await.is_err() { break },
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => {}
                    },
                }
            }
        });
    }
}
