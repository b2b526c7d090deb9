//! `converge install` and `converge uninstall`: Converge as a systemd service, as k3s installs.
//!
//! install: the binary copied to `--bin` (so installing a newer binary is the upgrade), a config
//! file (written once; an existing one is the operator's and is kept), the unit, enabled for
//! `multi-user.target` by its symlink (what `systemctl enable` makes, so it also works where
//! systemd is not running yet), and — where systemd runs — `daemon-reload` and a restart.
//! uninstall: every guest stopped through the API (VMs halted, bare VMIs deleted) while the
//! server still runs, the service stopped and disabled, the unit removed; `--purge` also removes
//! the data dir, the config, the node's network namespace and tables, and the binary.

use crate::client::Client;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const UNIT: &str = "converge.service";

#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// Where the database, certificates and kubeconfig live (default /var/lib/converge).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// ADDR:PORT to serve on (default 127.0.0.1:6443).
    #[arg(long)]
    pub listen: Option<String>,
    /// postgres://… to keep the store in PostgreSQL.
    #[arg(long)]
    pub database: Option<String>,
    /// Extra names for the serving certificate (repeatable).
    #[arg(long = "tls-san", value_delimiter = ',')]
    pub tls_san: Vec<String>,
    /// Serve the API only: no guests on this host, so no libvirt dependency.
    #[arg(long)]
    pub no_node: bool,
    #[command(flatten)]
    pub paths: InstallPaths,
    /// Write and enable, but do not (re)start the service.
    #[arg(long)]
    pub no_start: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct InstallPaths {
    /// The config file the service runs with.
    #[arg(long, default_value = "/etc/converge/config.toml")]
    pub config: PathBuf,
    /// Where the unit goes.
    #[arg(long, default_value = "/etc/systemd/system")]
    pub unit_dir: PathBuf,
    /// Where the binary is installed (the unit's ExecStart).
    #[arg(long, default_value = "/usr/local/bin/converge")]
    pub bin: PathBuf,
}

/// The config file `install` writes: the keys `converge serve --config` reads.
#[derive(Serialize, Debug, PartialEq)]
struct InstalledConfig {
    data_dir: PathBuf,
    listen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tls_san: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    no_node: bool,
}

/// The unit. `Requires=libvirtd.service`: the node cannot run guests without it (a restart of
/// libvirtd restarts the server too, which guests survive); virtlogd holds QEMU's logs.
/// `KillMode=mixed`: SIGTERM to the server alone, which stops its helpers itself; guests' QEMU
/// processes are libvirtd's (machine.slice), never in this unit's cgroup.
pub fn unit_text(bin: &Path, config: &Path, needs_libvirt: bool) -> String {
    let libvirt = if needs_libvirt {
        "Requires=libvirtd.service\nWants=virtlogd.socket\nAfter=libvirtd.service virtlogd.socket virtlogd.service\n"
    } else {
        ""
    };
    format!(
        "[Unit]\n\
         Description=Converge: virtual machines as Kubernetes objects\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         {libvirt}\
         \n\
         [Service]\n\
         Type=notify\n\
         ExecStart={bin} serve --config {config}\n\
         Restart=always\n\
         RestartSec=2\n\
         KillMode=mixed\n\
         TimeoutStopSec=30\n\
         LimitNOFILE=1048576\n\
         StandardOutput=journal\n\
         StandardError=journal\n\
         SyslogIdentifier=converge\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        bin = bin.display(),
        config = config.display(),
    )
}

/// True where systemd is PID 1 (sd_booted's test).
pub fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn systemctl(args: &[&str]) -> Result<()> {
    let status = std::process::Command::new("systemctl").args(args).status().context("running systemctl")?;
    if !status.success() {
        bail!("systemctl {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn write_file(path: &Path, text: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
    }
    let tmp = path.with_extension("converge-tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(text)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn wants_link(unit_dir: &Path) -> PathBuf {
    unit_dir.join("multi-user.target.wants").join(UNIT)
}

impl InstallPaths {
    /// The same paths made absolute: the unit and its enabling link must not depend on where
    /// `install` ran.
    fn absolute(&self) -> Result<InstallPaths> {
        Ok(InstallPaths {
            config: std::path::absolute(&self.config)?,
            unit_dir: std::path::absolute(&self.unit_dir)?,
            bin: std::path::absolute(&self.bin)?,
        })
    }
}

pub async fn install(args: InstallArgs) -> Result<()> {
    let paths = &args.paths.absolute()?;
    // The binary: this one, unless it already is the installed one.
    let me = std::env::current_exe().context("finding this binary")?;
    let installed = std::fs::canonicalize(&paths.bin).ok();
    if installed.as_deref() != Some(me.as_path()) {
        let bytes = std::fs::read(&me).with_context(|| format!("reading {}", me.display()))?;
        write_file(&paths.bin, &bytes, 0o755)?;
    }
    // The config: the operator's once it exists.
    let data_dir = args.data_dir.clone().unwrap_or_else(|| PathBuf::from("/var/lib/converge"));
    let mut no_node = args.no_node;
    if paths.config.exists() {
        let given = args.data_dir.is_some() || args.listen.is_some() || args.database.is_some();
        if given || !args.tls_san.is_empty() {
            bail!(
                "{} exists: edit it (or remove it) instead of giving --data-dir, --listen, --database or --tls-san",
                paths.config.display()
            );
        }
        println!("kept {}", paths.config.display());
    } else {
        let config = InstalledConfig {
            data_dir: std::path::absolute(&data_dir)?,
            listen: args.listen.clone().unwrap_or_else(|| "127.0.0.1:6443".into()),
            database: args.database.clone(),
            tls_san: args.tls_san.clone(),
            no_node,
        };
        // 0600: a database URL may carry a password.
        write_file(&paths.config, toml::to_string(&config)?.as_bytes(), 0o600)?;
    }
    let (data_dir, _) = crate::config::store_location(Some(&paths.config), None, None)?;
    no_node |= crate::config::no_node(&paths.config)?;
    let unit = paths.unit_dir.join(UNIT);
    write_file(&unit, unit_text(&paths.bin, &paths.config, !no_node).as_bytes(), 0o644)?;
    let link = wants_link(&paths.unit_dir);
    std::fs::create_dir_all(link.parent().unwrap_or(&paths.unit_dir))?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&unit, &link).with_context(|| format!("enabling: {}", link.display()))?;

    let started = if !systemd_running() {
        println!(
            "systemd is not running on this machine: {UNIT} is written and enabled for its next boot; run the \
             server now with\n  {} serve --config {}",
            paths.bin.display(),
            paths.config.display()
        );
        false
    } else if args.no_start {
        systemctl(&["daemon-reload"])?;
        false
    } else {
        systemctl(&["daemon-reload"])?;
        // restart: starts it, or replaces a running older binary (the guests run on).
        systemctl(&["restart", UNIT])?;
        true
    };
    let kubeconfig = data_dir.join("kubeconfig");
    if started {
        let ready = wait_for(Duration::from_secs(60), || kubeconfig.exists()).await;
        if !ready {
            bail!("{UNIT} started but wrote no {} within 60 s: see journalctl -u converge", kubeconfig.display());
        }
    }
    println!("unit:       {} (enabled{})", unit.display(), if started { ", running" } else { "" });
    println!("config:     {}", paths.config.display());
    println!("kubeconfig: {}", kubeconfig.display());
    println!("reach it:   export KUBECONFIG={}; kubectl get vms -A", kubeconfig.display());
    println!("logs:       journalctl -u converge -f");
    Ok(())
}

async fn wait_for(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ok()
}

#[derive(clap::Args, Debug)]
pub struct UninstallArgs {
    #[command(flatten)]
    pub paths: InstallPaths,
    /// Also remove the data dir (the store, certificates, guests' disks and volumes), the config,
    /// the node's network namespace and tables, and the binary.
    #[arg(long)]
    pub purge: bool,
    /// Seconds to wait for the guests to shut down.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

pub async fn uninstall(args: UninstallArgs) -> Result<()> {
    let paths = &args.paths.absolute()?;
    let settings = crate::config::resolve(
        crate::config::ServeArgs { config: Some(paths.config.clone()), ..Default::default() },
        None,
    )
    .with_context(|| format!("reading {}", paths.config.display()))?;
    let data_dir = settings.server.data_dir.clone();
    let api = Client::from_kubeconfig(&data_dir.join("kubeconfig"));
    let answers = match &api {
        Ok(api) => api.get_json("/version").await.is_ok(),
        Err(_) => false,
    };
    match api {
        Ok(api) if answers => stop_guests(&api, Duration::from_secs(args.timeout)).await?,
        // Guests outlive the server; only a running server can stop them cleanly.
        _ => eprintln!("the server does not answer: guests it left running (virsh list) are not stopped"),
    }
    if systemd_running() {
        systemctl(&["disable", "--now", UNIT])?;
    } else {
        println!("systemd is not running on this machine: stop `converge serve` yourself");
    }
    let _ = std::fs::remove_file(wants_link(&paths.unit_dir));
    let unit = paths.unit_dir.join(UNIT);
    match std::fs::remove_file(&unit) {
        Ok(()) => println!("removed {}", unit.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", unit.display())),
    }
    if systemd_running() {
        systemctl(&["daemon-reload"])?;
    }
    if !args.purge {
        println!("kept {} and {} (--purge removes them)", data_dir.display(), paths.config.display());
        return Ok(());
    }
    if let Some(network) = settings.server.node.as_ref().and_then(|n| n.network.clone()) {
        use converge_engine::network::host::NetworkHost;
        let steps = converge_engine::network::setup::node_remove(&network);
        converge_engine::network::host::SystemNetworkHost.run(&steps).context("removing the node's network")?;
    }
    for path in [&data_dir, &paths.config, &paths.bin] {
        let removed = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
        match removed {
            Ok(()) => println!("removed {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    if let Some(dir) = paths.config.parent() {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}

/// Every guest shut down through the API (a VM's `stop`, a bare VMI deleted), until none is left.
async fn stop_guests(api: &Client, limit: Duration) -> Result<()> {
    let vmis = "/apis/kubevirt.io/v1/virtualmachineinstances";
    let list = api.get_json(vmis).await?.unwrap_or(Value::Null);
    let items = list["items"].as_array().cloned().unwrap_or_default();
    for vmi in &items {
        let (ns, name) =
            (vmi["metadata"]["namespace"].as_str().unwrap_or(""), vmi["metadata"]["name"].as_str().unwrap_or(""));
        let owned_by_vm = vmi["metadata"]["ownerReferences"]
            .as_array()
            .is_some_and(|refs| refs.iter().any(|r| r["kind"] == "VirtualMachine"));
        if owned_by_vm {
            let path = format!("/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}/stop");
            if let Err(e) = api.put(&path, &json!({})).await {
                eprintln!("stopping VM {ns}/{name}: {e:#}");
            }
        } else {
            api.delete(&format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}")).await?;
        }
        println!("stopping {ns}/{name}");
    }
    let end = std::time::Instant::now() + limit;
    loop {
        let left = api.get_json(vmis).await?.unwrap_or(Value::Null)["items"].as_array().map_or(0, Vec::len);
        if left == 0 {
            return Ok(());
        }
        if std::time::Instant::now() > end {
            bail!("{left} guest(s) still running after {} s: nothing was removed", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_the_installed_binary_with_its_config_after_libvirt() {
        let unit = unit_text(Path::new("/usr/local/bin/converge"), Path::new("/etc/converge/config.toml"), true);
        assert!(unit.contains("ExecStart=/usr/local/bin/converge serve --config /etc/converge/config.toml\n"));
        assert!(unit.contains("Requires=libvirtd.service\n") && unit.contains("After=libvirtd.service virtlogd"));
        assert!(unit.contains("Restart=always\n") && unit.contains("Type=notify\n"));
        assert!(unit.contains("StandardError=journal\n") && unit.contains("WantedBy=multi-user.target\n"));
        let api_only = unit_text(Path::new("/b"), Path::new("/c"), false);
        assert!(!api_only.contains("libvirtd"));
    }

    #[test]
    fn the_config_is_what_serve_reads() {
        let config = InstalledConfig {
            data_dir: "/var/lib/converge".into(),
            listen: "0.0.0.0:6443".into(),
            database: None,
            tls_san: vec!["vm-host.example".into()],
            no_node: false,
        };
        let text = toml::to_string(&config).expect("toml");
        assert_eq!(
            text,
            "data_dir = \"/var/lib/converge\"\nlisten = \"0.0.0.0:6443\"\ntls_san = [\"vm-host.example\"]\n"
        );
    }
}
