//! The cloud-init NoCloud seed of the full boot profile: `meta-data`, `user-data` and
//! `network-config` on a small FAT disk labelled `CIDATA`, which cloud-init in the guest finds
//! by its label (its NoCloud datasource reads vfat or iso9660 seeds).
//!
//! The documents are rendered by pure functions: cloud-config is YAML, and JSON is YAML, so
//! they are written with serde_json — every string is quoted and escaped, nothing the user
//! gives (a host name, a key comment, a file path) can break out of its field. File contents
//! travel base64-encoded, so certificates and binary files arrive byte for byte.
//!
//! The disk is written in-process with the `fatfs` crate (no mkfs.vfat/mtools on the host);
//! FAT long names carry `user-data` and `network-config`, which do not fit 8.3.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// The label cloud-init's NoCloud datasource looks for (it accepts `cidata` and `CIDATA`; a FAT
/// label is upper case).
pub const SEED_LABEL: &str = "CIDATA";
/// The user made when none is named.
pub const DEFAULT_USER: &str = "vfarm";
/// Where cloud-init records the progress of this boot's stages (`/run` is per boot, so a file
/// left from an earlier boot cannot be mistaken for this one's).
pub const STATUS_FILE: &str = "/run/cloud-init/status.json";

/// How far cloud-init's network stage (`init`: users, SSH keys and host keys, `write_files`,
/// `bootcmd`) is in this boot; what a login needs is done with it. The later stages (config,
/// final) go on in the background.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitStage {
    Running,
    Done,
    Failed(Vec<String>),
}

/// Reads [`STATUS_FILE`]'s content.
pub fn init_stage(status: &Value) -> InitStage {
    let v1 = &status["v1"];
    let mut errors = Vec::new();
    for stage in ["init-local", "init"] {
        if let Some(a) = v1[stage]["errors"].as_array() {
            errors.extend(a.iter().map(|e| {
                e.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| e.to_string())
            }));
        }
    }
    if !errors.is_empty() {
        return InitStage::Failed(errors);
    }
    if v1["init"]["finished"].is_number() {
        InitStage::Done
    } else {
        InitStage::Running
    }
}

/// A file written into the guest at its first boot (cloud-init `write_files`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedFile {
    /// Absolute path in the guest.
    pub path: String,
    pub content: Vec<u8>,
    /// Unix permission bits, e.g. `0o644`.
    pub mode: u32,
}

/// What the seed tells the guest at its first boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seed {
    /// cloud-init runs its per-instance modules (users, keys, files, host keys) once per
    /// instance id: a new id means a new machine.
    pub instance_id: String,
    /// Host name, or a fully qualified name (the first label is the host name).
    pub hostname: String,
    /// The login user, with passwordless sudo and a locked password.
    pub user: String,
    /// OpenSSH public key lines (`ssh-ed25519 AAAA… comment`).
    pub authorized_keys: Vec<String>,
    pub files: Vec<SeedFile>,
    /// The MAC address of the NIC to configure by DHCP, if the VM has one.
    pub nic_mac: Option<String>,
    /// A name server for `/etc/resolv.conf` (user-mode networking's is 10.0.2.3); `None`
    /// leaves the image's.
    pub dns: Option<String>,
    /// A NIC on a site network (MAC, address): configured statically and given the default
    /// route; the user-mode NIC then keeps only its forwarded ports.
    #[serde(default)]
    pub site_nic: Option<(String, crate::StaticIp)>,
}

impl Seed {
    /// Checks what the guest would otherwise reject half-way through its boot.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Err(Error::InvalidConfig { reason });
        if self.instance_id.is_empty() {
            return invalid("the cloud-init instance id is empty".into());
        }
        if self.hostname.is_empty()
            || self.hostname.len() > 253
            || !self.hostname.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
        {
            return invalid(format!(
                "hostname `{}` is not a valid host name",
                self.hostname
            ));
        }
        user_name_ok(&self.user)?;
        for k in &self.authorized_keys {
            authorized_key_ok(k)?;
        }
        for f in &self.files {
            if !f.path.starts_with('/')
                || f.path.ends_with('/')
                || f.path.contains('\0')
                || f.path.split('/').any(|c| c == "..")
            {
                return invalid(format!(
                    "guest file path `{}` must be absolute, name a file and have no `..`",
                    f.path
                ));
            }
            if f.mode > 0o7777 {
                return invalid(format!(
                    "file mode {:o} of {} is not a mode",
                    f.mode, f.path
                ));
            }
        }
        Ok(())
    }

    /// `meta-data`: the instance id and host name.
    pub fn meta_data(&self) -> String {
        let v = json!({
            "instance-id": self.instance_id,
            "local-hostname": self.hostname,
        });
        format!(
            "{}\n",
            serde_json::to_string_pretty(&v).expect("JSON of plain values")
        )
    }

    /// `user-data`: a `#cloud-config` document (JSON, which YAML parsers read as YAML).
    pub fn user_data(&self) -> String {
        let (short, fqdn) = match self.hostname.split_once('.') {
            Some((short, _)) => (short, Some(self.hostname.as_str())),
            None => (self.hostname.as_str(), None),
        };
        let mut doc = serde_json::Map::new();
        doc.insert("hostname".into(), json!(short));
        if let Some(f) = fqdn {
            doc.insert("fqdn".into(), json!(f));
        }
        doc.insert("preserve_hostname".into(), json!(false));
        doc.insert("manage_etc_hosts".into(), json!(true));
        doc.insert(
            "users".into(),
            json!([{
                "name": self.user,
                "shell": "/bin/bash",
                "lock_passwd": true,
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "ssh_authorized_keys": self.authorized_keys,
            }]),
        );
        // Every instance gets host keys of its own (the image's are deleted). Password logins
        // are left as the image has them (the user's password is locked): changing them makes
        // cloud-init restart sshd after it is up, and a login at that moment would fail.
        doc.insert("disable_root".into(), json!(true));
        doc.insert("ssh_deletekeys".into(), json!(true));
        doc.insert("ssh_genkeytypes".into(), json!(["ed25519", "ecdsa", "rsa"]));
        // Debian's cloud.cfg asks for en_US.UTF-8, which a minimal image has not generated:
        // the module would fail the boot's result. The image's locale stays.
        doc.insert("locale".into(), json!(false));
        if self.nic_mac.is_some() || self.site_nic.is_some() {
            // cloud-init renders the network for systemd-networkd when the image has no
            // ifupdown, but does not enable networkd, which Debian ships disabled.
            doc.insert(
                "bootcmd".into(),
                json!([[
                    "systemctl",
                    "enable",
                    "--now",
                    "--no-block",
                    "systemd-networkd.service"
                ]]),
            );
        }
        let resolv = self.dns.as_ref().map(|ns| SeedFile {
            path: "/etc/resolv.conf".into(),
            content: format!("nameserver {ns}\n").into_bytes(),
            mode: 0o644,
        });
        // The user's files come last: one of them may replace resolv.conf.
        let all: Vec<&SeedFile> = resolv.iter().chain(&self.files).collect();
        if !all.is_empty() {
            let files: Vec<Value> = all
                .iter()
                .map(|f| {
                    json!({
                        "path": f.path,
                        "encoding": "b64",
                        "content": base64::engine::general_purpose::STANDARD.encode(&f.content),
                        "permissions": format!("0{:o}", f.mode),
                        "owner": "root:root",
                    })
                })
                .collect();
            doc.insert("write_files".into(), Value::Array(files));
        }
        format!(
            "#cloud-config\n{}\n",
            serde_json::to_string_pretty(&Value::Object(doc)).expect("JSON of plain values")
        )
    }

    /// `network-config` (version 2): DHCP on the NIC with the VM's MAC, whatever the guest
    /// names it. `None` without a NIC.
    pub fn network_config(&self) -> Option<String> {
        let mut ethernets = serde_json::Map::new();
        if let Some(mac) = &self.nic_mac {
            let nic0 = if self.site_nic.is_some() {
                // QEMU's user-mode network always puts the guest at 10.0.2.15; no route, so
                // the site network's gateway is the only default.
                json!({ "match": { "macaddress": mac }, "addresses": ["10.0.2.15/24"] })
            } else {
                json!({ "match": { "macaddress": mac }, "dhcp4": true })
            };
            ethernets.insert("nic0".into(), nic0);
        }
        if let Some((mac, ip)) = &self.site_nic {
            let mut nic = json!({
                "match": { "macaddress": mac },
                "addresses": [format!("{}/{}", ip.address, ip.prefix)],
            });
            if let Some(gw) = ip.gateway {
                nic["routes"] = json!([{ "to": "0.0.0.0/0", "via": gw.to_string() }]);
            }
            if !ip.nameservers.is_empty() {
                nic["nameservers"] = json!({ "addresses": ip.nameservers });
            }
            ethernets.insert("site0".into(), nic);
        }
        if ethernets.is_empty() {
            return None;
        }
        let v = json!({ "version": 2, "ethernets": ethernets });
        Some(format!(
            "{}\n",
            serde_json::to_string_pretty(&v).expect("JSON of plain values")
        ))
    }

    /// The seed's files by name, as they go on the disk.
    pub fn documents(&self) -> Vec<(&'static str, String)> {
        let mut docs = vec![
            ("meta-data", self.meta_data()),
            ("user-data", self.user_data()),
        ];
        if let Some(n) = self.network_config() {
            docs.push(("network-config", n));
        }
        docs
    }
}

/// A Linux user name cloud-init (useradd) accepts and that is not a system account vfarm
/// would clash with.
pub fn user_name_ok(user: &str) -> Result<()> {
    let ok = !user.is_empty()
        && user.len() <= 32
        && user
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && user
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        return Err(Error::InvalidConfig {
            reason: format!(
                "user name `{user}` must be 1-32 characters of a-z 0-9 _ -, starting with a \
                 letter or _"
            ),
        });
    }
    if user == "root" {
        return Err(Error::InvalidConfig {
            reason: "the login user cannot be root (root login over SSH is disabled; the user \
                     has sudo)"
                .into(),
        });
    }
    Ok(())
}

/// One OpenSSH public key line: a known key type, base64 data, an optional comment.
pub fn authorized_key_ok(line: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::InvalidConfig {
            reason: format!(
                "`{}` is not an OpenSSH public key line ({why})",
                line.chars().take(40).collect::<String>()
            ),
        })
    };
    if line.contains(['\n', '\r', '\0']) {
        return bad("it spans lines");
    }
    let mut parts = line.split_whitespace();
    let (Some(kind), Some(data)) = (parts.next(), parts.next()) else {
        return bad("expected `TYPE BASE64 [COMMENT]`");
    };
    let known = kind.starts_with("ssh-")
        || kind.starts_with("ecdsa-sha2-")
        || kind.starts_with("sk-ssh-")
        || kind.starts_with("sk-ecdsa-");
    if !known {
        return bad("unknown key type; is this a private key or an options prefix?");
    }
    if base64::engine::general_purpose::STANDARD
        .decode(data)
        .is_err()
    {
        return bad("the key data is not base64");
    }
    Ok(())
}

/// Size of the seed disk: room for the documents plus FAT overhead, at least 2 MiB (FAT12's
/// smallest comfortable volume), rounded to whole MiB.
fn seed_size(docs: &[(&str, String)]) -> u64 {
    let content: u64 = docs.iter().map(|(_, d)| d.len() as u64 + 4096).sum();
    let mib = 1u64 << 20;
    (content * 2 + 2 * mib).div_ceil(mib) * mib
}

/// Writes the seed disk (raw FAT image) to `path`, atomically: a seed is either complete or
/// absent.
pub fn write_seed(path: &Path, seed: &Seed) -> Result<()> {
    seed.validate()?;
    let docs = seed.documents();
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io("create", dir, e))?;
    let io = |e: std::io::Error| Error::io("write the cloud-init seed", path, e);
    {
        let f = tmp.as_file_mut();
        f.set_len(seed_size(&docs)).map_err(io)?;
        let mut label = [b' '; 11];
        label[..SEED_LABEL.len()].copy_from_slice(SEED_LABEL.as_bytes());
        fatfs::format_volume(
            &mut *f,
            fatfs::FormatVolumeOptions::new().volume_label(label),
        )
        .map_err(io)?;
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        let fs = fatfs::FileSystem::new(&mut *f, fatfs::FsOptions::new()).map_err(io)?;
        {
            let root = fs.root_dir();
            for (name, text) in &docs {
                let mut out = root.create_file(name).map_err(io)?;
                out.truncate().map_err(io)?;
                out.write_all(text.as_bytes()).map_err(io)?;
                out.flush().map_err(io)?;
            }
        }
        fs.unmount().map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    tmp.persist(path)
        .map_err(|e| Error::io("write the cloud-init seed", path, e.error))?;
    Ok(())
}

/// A seed disk as read back: its label and its files (name, content), sorted by name.
pub type SeedContents = (String, Vec<(String, Vec<u8>)>);

/// Reads a seed disk back (to check what a guest will find).
pub fn read_seed(path: &Path) -> Result<SeedContents> {
    use std::io::Read;
    let io = |e: std::io::Error| Error::io("read the cloud-init seed", path, e);
    let f = std::fs::File::open(path).map_err(io)?;
    let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new()).map_err(io)?;
    let label = fs
        .read_volume_label_from_root_dir()
        .map_err(io)?
        .unwrap_or_else(|| fs.volume_label());
    let mut files = Vec::new();
    for e in fs.root_dir().iter() {
        let e = e.map_err(io)?;
        if e.is_file() {
            let mut data = Vec::new();
            e.to_file().read_to_end(&mut data).map_err(io)?;
            files.push((e.file_name(), data));
        }
    }
    files.sort();
    Ok((label.trim_end().to_string(), files))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGqXxJ0cTz1Z8Yx1y9Y2N6s3w4v5u6t7s8r9q0p1o2n3 me@host";

    fn seed() -> Seed {
        Seed {
            instance_id: "vfarm-0123abcd".into(),
            hostname: "node1.example.org".into(),
            user: "alice".into(),
            authorized_keys: vec![KEY.into()],
            files: vec![SeedFile {
                path: "/etc/grid-security/hostcert.pem".into(),
                content: b"-----BEGIN CERTIFICATE-----\nMIIB\"quoted\"\n".to_vec(),
                mode: 0o644,
            }],
            nic_mac: Some("52:54:00:12:34:56".into()),
            dns: Some("10.0.2.3".into()),
            site_nic: None,
        }
    }

    #[test]
    fn user_data_matches_golden() {
        assert_eq!(
            seed().user_data(),
            include_str!("../tests/golden/full-user-data.yaml")
        );
    }

    #[test]
    fn meta_and_network_config() {
        let s = seed();
        let meta: Value = serde_json::from_str(&s.meta_data()).unwrap();
        assert_eq!(meta["instance-id"], "vfarm-0123abcd");
        assert_eq!(meta["local-hostname"], "node1.example.org");
        let net: Value = serde_json::from_str(&s.network_config().unwrap()).unwrap();
        assert_eq!(
            net["ethernets"]["nic0"]["match"]["macaddress"],
            "52:54:00:12:34:56"
        );
        let mut no_nic = s.clone();
        no_nic.nic_mac = None;
        assert_eq!(no_nic.network_config(), None);
        assert_eq!(no_nic.documents().len(), 2);
        // On a site network: the static address and the only default route are the site
        // NIC's; the user-mode NIC keeps its fixed address for the forwarded ports.
        let mut site = s.clone();
        site.site_nic = Some((
            "52:54:00:aa:bb:cc".into(),
            crate::StaticIp {
                address: "192.0.2.10".parse().unwrap(),
                prefix: 24,
                gateway: Some("192.0.2.1".parse().unwrap()),
                nameservers: vec!["192.0.2.53".parse().unwrap()],
            },
        ));
        let net: Value = serde_json::from_str(&site.network_config().unwrap()).unwrap();
        let e = &net["ethernets"];
        assert_eq!(e["nic0"]["addresses"][0], "10.0.2.15/24");
        assert!(e["nic0"].get("dhcp4").is_none() && e["nic0"].get("routes").is_none());
        assert_eq!(e["site0"]["match"]["macaddress"], "52:54:00:aa:bb:cc");
        assert_eq!(e["site0"]["addresses"][0], "192.0.2.10/24");
        assert_eq!(e["site0"]["routes"][0]["via"], "192.0.2.1");
        assert_eq!(e["site0"]["nameservers"]["addresses"][0], "192.0.2.53");
    }

    #[test]
    fn hostile_strings_stay_inside_their_fields() {
        let mut s = seed();
        s.authorized_keys = vec![format!("{KEY} \"x\": 1, \"runcmd\": [\"reboot\"]")];
        s.validate().unwrap();
        let text = s.user_data();
        let v: Value = serde_json::from_str(text.trim_start_matches("#cloud-config\n")).unwrap();
        assert!(v.get("runcmd").is_none());
        assert_eq!(
            v["users"][0]["ssh_authorized_keys"][0],
            s.authorized_keys[0].as_str()
        );
    }

    #[test]
    fn refuses_bad_input_naming_it() {
        type Change = Box<dyn Fn(&mut Seed)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|s| s.user = "root".into()), "root"),
            (Box::new(|s| s.user = "Bad User".into()), "user name"),
            (Box::new(|s| s.hostname = "a_b".into()), "hostname"),
            (
                Box::new(|s| {
                    s.authorized_keys = vec!["-----BEGIN OPENSSH PRIVATE KEY-----".into()]
                }),
                "public key",
            ),
            (
                Box::new(|s| s.authorized_keys = vec!["ssh-ed25519 !!!".into()]),
                "base64",
            ),
            (Box::new(|s| s.files[0].path = "etc/x".into()), "absolute"),
            (Box::new(|s| s.files[0].path = "/etc/../x".into()), ".."),
        ];
        for (change, word) in cases {
            let mut s = seed();
            change(&mut s);
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(word), "{e} should mention {word}");
        }
    }

    #[test]
    fn init_stage_progress() {
        let running = json!({"v1": {"init-local": {"errors": [], "finished": 1.5},
                                    "init": {"errors": [], "finished": null, "start": 2.0}}});
        assert_eq!(init_stage(&running), InitStage::Running);
        assert_eq!(init_stage(&json!({})), InitStage::Running);
        let done = json!({"v1": {"init": {"errors": [], "finished": 3.25},
                                 "modules-config": {"finished": null}}});
        assert_eq!(init_stage(&done), InitStage::Done);
        let failed = json!({"v1": {"init": {"errors": ["users-groups: boom"], "finished": 3.0}}});
        assert_eq!(
            init_stage(&failed),
            InitStage::Failed(vec!["users-groups: boom".into()])
        );
    }

    #[test]
    fn seed_disk_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        let s = seed();
        write_seed(&path, &s).unwrap();
        let (label, files) = read_seed(&path).unwrap();
        assert_eq!(label, SEED_LABEL);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["meta-data", "network-config", "user-data"]);
        let user_data = &files.iter().find(|(n, _)| n == "user-data").unwrap().1;
        assert_eq!(String::from_utf8_lossy(user_data), s.user_data());
        // The FAT boot sector carries the label too (blkid reads either).
        let raw = std::fs::read(&path).unwrap();
        assert_eq!(&raw[43..54], b"CIDATA     ");
    }
}
