//! CDI's hard lessons as checks: where an import may fetch from, and which images may land in a
//! volume.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Component, Path};

use super::volume::ImageInfo;
use super::StorageError;

/// Addresses an import must not reach unless the node allows it: loopback, link-local (where
/// cloud metadata services live), unspecified, and the well-known metadata addresses.
pub fn private_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4 == Ipv4Addr::new(100, 100, 100, 200)
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                || v6.to_ipv4_mapped().is_some_and(|v4| private_address(IpAddr::V4(v4)))
        }
    }
}

/// Whether a URL's host is private by its text alone: a literal loopback, link-local or
/// metadata address, `localhost`, or no host. A name is the resolver's to check.
pub fn private_host(host: Option<url::Host<&str>>) -> bool {
    match host {
        Some(url::Host::Ipv4(ip)) => private_address(ip.into()),
        Some(url::Host::Ipv6(ip)) => private_address(ip.into()),
        Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        None => true,
    }
}

/// Resolves `url`'s host and refuses it when any address is private (and not allowed). Returns
/// the addresses, so the caller connects to what was checked rather than resolving again.
pub async fn check_url(url: &url::Url, allow_private: bool) -> Result<Vec<std::net::SocketAddr>, StorageError> {
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(StorageError::refused(format!("URL scheme {other:?} is not supported (use http or https)")))
        }
    }
    let host = url.host_str().ok_or_else(|| StorageError::refused(format!("URL {url} has no host")))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| StorageError::Transient(format!("cannot resolve {host}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(StorageError::Transient(format!("{host} resolves to no address")));
    }
    if !allow_private {
        if let Some(bad) = addrs.iter().find(|a| private_address(a.ip())) {
            return Err(StorageError::refused(format!(
                "import URL {url} resolves to {}, a loopback, link-local or metadata address; \
                 imports from such addresses are off (converge serve --allow-private-imports)",
                bad.ip()
            )));
        }
    }
    Ok(addrs)
}

/// Image formats the importer converts; anything else is refused.
pub const IMPORTABLE_FORMATS: &[&str] = &["raw", "qcow2", "vmdk", "vdi", "vhdx"];

/// Refuses images that reach outside themselves or exceed the volume.
pub fn check_image(info: &ImageInfo, capacity: u64) -> Result<(), StorageError> {
    if !IMPORTABLE_FORMATS.contains(&info.format.as_str()) {
        return Err(StorageError::refused(format!(
            "image format {:?} is not supported (raw, qcow2, vmdk, vdi, vhdx)",
            info.format
        )));
    }
    if let Some(backing) = &info.backing_file {
        return Err(StorageError::refused(format!(
            "the image has a backing file ({backing:?}); only self-contained images are imported"
        )));
    }
    if let Some(data) = &info.data_file {
        return Err(StorageError::refused(format!(
            "the image has an external data file ({data:?}); only self-contained images are imported"
        )));
    }
    if let Some(other) = info.extents.iter().find(|e| !e.is_empty()) {
        return Err(StorageError::refused(format!(
            "the image refers to another file ({other:?}); only self-contained images are imported"
        )));
    }
    if info.virtual_size > capacity {
        return Err(StorageError::refused(format!(
            "the image's virtual size ({} bytes) is larger than the volume ({capacity} bytes)",
            info.virtual_size
        )));
    }
    Ok(())
}

/// Refusals readable from a qcow2 header alone, checked before any tool opens the image (opening
/// one follows its backing file and data file): a backing file, or the external-data-file bit.
pub fn qcow2_header_refusal(head: &[u8]) -> Option<String> {
    let be64 = |at: usize| head.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
    let be32 = |at: usize| head.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
    if !head.starts_with(b"QFI\xfb") {
        return None;
    }
    let (version, backing_offset, backing_size) = (be32(4)?, be64(8)?, be32(16)?);
    if backing_offset != 0 && backing_size != 0 {
        let name = head
            .get(backing_offset as usize..backing_offset as usize + backing_size as usize)
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_else(|| "?".into());
        return Some(format!("the image has a backing file ({name:?}); only self-contained images are imported"));
    }
    const EXTERNAL_DATA_FILE: u64 = 1 << 2;
    if version >= 3 && be64(72).is_some_and(|f| f & EXTERNAL_DATA_FILE != 0) {
        return Some("the image has an external data file; only self-contained images are imported".into());
    }
    None
}

/// A relative path from an archive, or `None` when it would land outside the directory it is
/// extracted into.
pub fn contained(path: &Path) -> Option<&Path> {
    let ok = path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    (ok && !path.as_os_str().is_empty()).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_told_apart() {
        for a in ["127.0.0.1", "169.254.169.254", "0.0.0.0", "::1", "fe80::1", "fd00:ec2::254", "::ffff:127.0.0.1"] {
            assert!(private_address(a.parse().unwrap()), "{a}");
        }
        for a in ["10.0.0.1", "192.0.2.7", "2001:db8::1"] {
            assert!(!private_address(a.parse().unwrap()), "{a}");
        }
    }

    #[tokio::test]
    async fn loopback_urls_are_refused_unless_allowed() {
        let u = url::Url::parse("http://127.0.0.1:9/x.img").unwrap();
        let err = check_url(&u, false).await.unwrap_err();
        assert!(err.is_final() && err.to_string().contains("loopback"), "{err}");
        assert!(check_url(&u, true).await.is_ok());
        let u = url::Url::parse("http://localhost:9/x.img").unwrap();
        assert!(check_url(&u, false).await.is_err());
        let u = url::Url::parse("file:///etc/passwd").unwrap();
        assert!(check_url(&u, true).await.unwrap_err().to_string().contains("scheme"));
    }

    #[test]
    fn images_that_reach_outside_or_overflow_are_refused() {
        let ok = ImageInfo {
            format: "qcow2".into(),
            virtual_size: 100,
            backing_file: None,
            data_file: None,
            extents: vec![],
        };
        assert!(check_image(&ok, 100).is_ok());
        let cases = [
            (ImageInfo { backing_file: Some("/etc/shadow".into()), ..ok.clone() }, "backing file"),
            (ImageInfo { data_file: Some("/dev/sda".into()), ..ok.clone() }, "external data file"),
            (ImageInfo { virtual_size: 101, ..ok.clone() }, "larger than the volume"),
            (ImageInfo { format: "luks".into(), ..ok.clone() }, "not supported"),
            (ImageInfo { extents: vec!["/etc/shadow".into()], ..ok.clone() }, "refers to another file"),
        ];
        for (info, want) in cases {
            assert!(check_image(&info, 100).unwrap_err().to_string().contains(want), "{want}");
        }
    }

    /// Hostile headers are read without opening anything they name.
    #[test]
    fn qcow2_headers_tell_backing_and_data_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let sh = |c: &str| assert!(std::process::Command::new("sh").arg("-c").arg(c).status().unwrap().success());
        sh(&format!("qemu-img create -q -f raw {d}/b.raw 1M && qemu-img create -q -f qcow2 -F raw -b {d}/b.raw {d}/backed.qcow2"));
        sh(&format!("qemu-img create -q -f qcow2 -o data_file={d}/data.raw {d}/datafile.qcow2 1M"));
        sh(&format!("qemu-img create -q -f qcow2 {d}/plain.qcow2 1M"));
        let head = |n: &str| {
            let all = std::fs::read(dir.path().join(n)).unwrap();
            all[..all.len().min(64 << 10)].to_vec()
        };
        assert!(qcow2_header_refusal(&head("backed.qcow2")).unwrap().contains("b.raw"));
        assert!(qcow2_header_refusal(&head("datafile.qcow2")).unwrap().contains("external data file"));
        assert_eq!(qcow2_header_refusal(&head("plain.qcow2")), None);
    }

    #[test]
    fn archive_paths_stay_inside() {
        assert!(contained(Path::new("a/b.txt")).is_some());
        assert!(contained(Path::new("./a")).is_some());
        assert!(contained(Path::new("../etc/passwd")).is_none());
        assert!(contained(Path::new("/etc/passwd")).is_none());
        assert!(contained(Path::new("a/../../b")).is_none());
    }
}
