//! A host's cloud-init user data from the request's `userData` and `sshKeys`. Pure.
//!
//! Keys alone become a `#cloud-config` with `ssh_authorized_keys`. Keys beside user data become a
//! MIME multi-part message — the user's part as given, then a cloud-config part with the keys —
//! which cloud-init merges, so the user's data is never parsed or rewritten here.

const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// An OpenSSH public key line: a known type, base64 key material, an optional comment.
pub fn check_ssh_key(key: &str) -> Result<(), String> {
    if key.contains(['\n', '\r']) {
        return Err("one key per entry, on one line".into());
    }
    let mut parts = key.split_whitespace();
    let kind = parts.next().unwrap_or_default();
    if !KEY_TYPES.contains(&kind) {
        return Err(format!("not an OpenSSH public key: the type {kind:?} is not one of {}", KEY_TYPES.join(", ")));
    }
    let material = parts.next().unwrap_or_default();
    if material.len() < 16 || !material.chars().all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c)) {
        return Err("not an OpenSSH public key: the key material is missing or not base64".into());
    }
    Ok(())
}

fn keys_config(keys: &[String]) -> String {
    let mut out = String::from("#cloud-config\nssh_authorized_keys:\n");
    for k in keys {
        // JSON strings are YAML flow scalars: quoting is exact whatever the comment holds.
        out.push_str(&format!("  - {}\n", serde_json::Value::String(k.trim().to_string())));
    }
    out
}

/// The MIME type cloud-init gives a part by its first line.
fn part_type(data: &str) -> &'static str {
    let first = data.lines().next().unwrap_or_default();
    if first.starts_with("#!") {
        "text/x-shellscript"
    } else if first.starts_with("#cloud-boothook") {
        "text/cloud-boothook"
    } else if first.starts_with("#include") {
        "text/x-include-url"
    } else {
        "text/cloud-config"
    }
}

/// The user data to give the guest, if there is any.
pub fn user_data(user: Option<&str>, keys: &[String]) -> Option<String> {
    let user = user.filter(|u| !u.is_empty());
    match (user, keys.is_empty()) {
        (None, true) => None,
        (Some(u), true) => Some(u.to_string()),
        (None, false) => Some(keys_config(keys)),
        (Some(u), false) => {
            let boundary = boundary_for(u);
            Some(format!(
                "Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n\
                 --{boundary}\nContent-Type: {}; charset=\"utf-8\"\n\n{u}\n\
                 --{boundary}\nContent-Type: text/cloud-config; charset=\"utf-8\"\n\n{}\n--{boundary}--\n",
                part_type(u),
                keys_config(keys)
            ))
        }
    }
}

/// A boundary that does not occur in the user's data.
fn boundary_for(data: &str) -> String {
    let mut n = 0;
    loop {
        let b = format!("converge-bridge-{n}");
        if !data.contains(&b) {
            return b;
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv7 me@laptop";

    #[test]
    fn keys_are_checked() {
        assert!(check_ssh_key(KEY).is_ok());
        assert!(check_ssh_key("ssh-ed25519").is_err());
        assert!(check_ssh_key("rsa AAAAB3NzaC1yc2EAAAADAQAB").is_err());
        assert!(check_ssh_key("ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB\nssh-rsa AAAA").is_err());
        assert!(check_ssh_key("ssh-rsa not*base64*at*all!").is_err());
    }

    #[test]
    fn user_data_is_passed_through_keys_become_cloud_config() {
        assert_eq!(user_data(None, &[]), None);
        assert_eq!(user_data(Some(""), &[]), None);
        assert_eq!(user_data(Some("#!/bin/sh\necho hi"), &[]).as_deref(), Some("#!/bin/sh\necho hi"));
        let keys = vec![KEY.to_string()];
        assert_eq!(
            user_data(None, &keys).as_deref(),
            Some("#cloud-config\nssh_authorized_keys:\n  - \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv7 me@laptop\"\n")
        );
    }

    #[test]
    fn both_make_a_multipart_message_with_the_user_part_untouched() {
        let keys = vec![KEY.to_string()];
        let out = user_data(Some("#!/bin/sh\necho converge-bridge-0"), &keys).unwrap_or_default();
        assert!(out.starts_with("Content-Type: multipart/mixed; boundary=\"converge-bridge-1\""), "{out}");
        assert!(
            out.contains("Content-Type: text/x-shellscript; charset=\"utf-8\"\n\n#!/bin/sh\necho converge-bridge-0\n")
        );
        assert!(out.contains("Content-Type: text/cloud-config"));
        assert!(out.ends_with("--converge-bridge-1--\n"));
    }
}
