//! The bundle's `config.json`, rendered from an instance spec with the `oci-spec` crate.
//! Pure: no files are touched here, so the rendering is tested without a runtime.

use oci_spec::runtime::{
    Arch, Capabilities, Capability, Hook, HookBuilder, HooksBuilder, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder,
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscallBuilder, MountBuilder, Spec,
};

use crate::{DriverError, InstanceSpec, Network, Result};

/// CFS period for CPU limits; the quota is `cpus` periods.
const CPU_PERIOD_US: u64 = 100_000;

/// Ids mapped into an instance's user namespace: 0–65535 to the spec's `id_base` onwards
/// (the driver shifts the owners of the instance's bottom layer to match).
const USERNS_IDS: u32 = crate::idmap::IDS_PER_RANGE;

/// The capabilities of an instance in a user namespace with a private id range: Docker's
/// default set without raw sockets, device nodes or file capabilities.
const NAMESPACED_CAPS: &[Capability] = &[
    Capability::AuditWrite,
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::NetBindService,
    Capability::Setgid,
    Capability::Setpcap,
    Capability::Setuid,
    Capability::SysChroot,
];

/// Syscalls no instance may make, refused with EPERM (the rest are allowed): the host's
/// kernel state (modules, kexec, reboot, clocks, swap, accounting, quotas), kernel attack
/// surface an instance has no use for (bpf, perf, userfaultfd, the keyring, handle-based
/// opens that bypass the mount namespace), mounts, and new namespaces (a nested user
/// namespace would hand the instance a full capability set again). The set follows the
/// default profiles of Docker and LXC/Incus for an instance without CAP_SYS_ADMIN.
const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "adjtimex",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "ioperm",
    "iopl",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "sysfs",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
    "_sysctl",
];
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;
/// `clone` flags that make new namespaces.
const CLONE_NEWNS_FLAGS: &[u64] = &[
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

/// The seccomp filter every instance runs under (see [`DENIED_SYSCALLS`]).
fn seccomp_profile() -> Result<LinuxSeccomp> {
    let mut rules = vec![built(
        LinuxSyscallBuilder::default()
            .names(
                DENIED_SYSCALLS
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
            )
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(EPERM)
            .build(),
    )?];
    // clone3 passes its flags in memory a filter cannot read: ENOSYS makes the C library
    // fall back to clone, whose flags the rules below do read.
    rules.push(built(
        LinuxSyscallBuilder::default()
            .names(vec!["clone3".to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(ENOSYS)
            .build(),
    )?);
    for &flag in CLONE_NEWNS_FLAGS {
        let arg = built(
            LinuxSeccompArgBuilder::default()
                .index(0usize)
                .value(flag)
                .value_two(flag)
                .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                .build(),
        )?;
        rules.push(built(
            LinuxSyscallBuilder::default()
                .names(vec!["clone".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(EPERM)
                .args(vec![arg])
                .build(),
        )?);
    }
    built(
        LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .architectures(vec![
                Arch::ScmpArchX86_64,
                Arch::ScmpArchX86,
                Arch::ScmpArchX32,
            ])
            .syscalls(rules)
            .build(),
    )
}

/// The main command when the spec gives none: an idle init that exits promptly on SIGTERM,
/// so a graceful stop is quick (pid 1 ignores signals it has no handler for).
pub const IDLE_INIT: &[&str] = &[
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM INT; while :; do sleep 86400 & wait $!; done",
];

fn bad(field: &'static str, reason: impl Into<String>) -> DriverError {
    DriverError::InvalidSpec {
        field,
        reason: reason.into(),
    }
}

fn built<T>(r: std::result::Result<T, oci_spec::OciSpecError>) -> Result<T> {
    r.map_err(|e| bad("config", e.to_string()))
}

/// Puts a new container on its network: runs as root in the host's namespaces once runc has
/// made the container's namespaces (createRuntime), with the container state on stdin. The
/// network namespace is the container's own (owned by its user namespace, so sysfs mounts
/// and `runc exec` work); the veth's host end goes on the bridge, the peer in as `eth0`
/// with the leased address, before the command starts. A stopped container's namespace,
/// and the veth with it, vanish; every start plugs anew.
const ATTACH_HOOK: &str = r#"set -eu
pid=$(tr -d ' \n' | sed -n 's/.*"pid":\([0-9][0-9]*\).*/\1/p')
[ -n "$pid" ] || { echo "vfarm attach hook: no pid in the container state" >&2; exit 1; }
h=$1 br=$2 cidr=$3 gw=$4 mac=$5
p="vfp-${h#vfh-}"
ip link del "$h" 2>/dev/null || true
ip link add "$h" type veth peer name "$p"
ip link set "$p" netns "$pid"
ip link set "$h" master "$br" up
n() { nsenter -t "$pid" -n "$@"; }
n ip link set "$p" name eth0
n ip link set eth0 address "$mac"
n ip addr add "$cidr" dev eth0
n ip link set eth0 up
n ip link set lo up
[ -z "$gw" ] || n ip route add default via "$gw"
"#;

fn attach_hook(a: &crate::Attachment) -> Result<Hook> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 15
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    if !a.link.starts_with("vfh-") || !name_ok(&a.link) || !name_ok(&a.bridge) {
        return Err(bad(
            "network",
            format!(
                "`{}` on bridge `{}` is not a link of vfarm's",
                a.link, a.bridge
            ),
        ));
    }
    let args = vec![
        "sh".to_string(),
        "-c".to_string(),
        ATTACH_HOOK.to_string(),
        "vfarm-attach".to_string(),
        a.link.clone(),
        a.bridge.clone(),
        format!("{}/{}", a.address, a.prefix),
        a.gateway.map(|g| g.to_string()).unwrap_or_default(),
        a.mac.clone(),
    ];
    built(
        HookBuilder::default()
            .path("/bin/sh")
            .args(args)
            .env(vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_string()])
            .timeout(30i64)
            .build(),
    )
}

/// Render the runtime config for `spec`. The rootfs is `rootfs` next to `config.json`; the
/// cgroup is `/vfarm/<id>` under each controller.
pub fn render(spec: &InstanceSpec) -> Result<Spec> {
    crate::validate_id(&spec.id)?;
    validate_hostname(&spec.hostname)?;
    let mut cfg = Spec::default();
    cfg.set_hostname(Some(spec.hostname.clone()));
    cfg.set_annotations(Some(
        [
            ("org.vfarm.instance".to_string(), spec.id.clone()),
            ("org.vfarm.image".to_string(), spec.image.id.clone()),
        ]
        .into_iter()
        .collect(),
    ));
    if let Some(root) = cfg.root_mut() {
        // The overlay's upper dir takes the writes; the image below stays untouched.
        root.set_readonly(Some(false));
    }

    let process = cfg
        .process_mut()
        .as_mut()
        .expect("default spec has a process");
    let args: Vec<String> = if spec.command.is_empty() {
        IDLE_INIT.iter().map(|s| s.to_string()).collect()
    } else {
        spec.command.clone()
    };
    process.set_args(Some(args));
    process.set_terminal(Some(false));
    let mut env = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        format!("HOSTNAME={}", spec.hostname),
        "HOME=/root".to_string(),
    ];
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(bad("env", format!("`{k}` is not a valid variable name")));
        }
        env.retain(|e| !e.starts_with(&format!("{k}=")));
        env.push(format!("{k}={v}"));
    }
    process.set_env(Some(env));
    if spec.user_namespace && spec.id_base != 0 {
        // Root's usual powers over ids and files, held in the instance's own user namespace:
        // they act only on the ids of its private range and on files those ids own, never on
        // the host's. Daemons that switch users or drop groups (slurmctld, slurmd, sshd,
        // munged) need them. Without a private range (id_base 0, records made before ranges
        // existed) the instance's ids are the host's, so it keeps the minimal set.
        let caps: Capabilities = NAMESPACED_CAPS.iter().copied().collect();
        let mut c = process.capabilities().clone().unwrap_or_default();
        c.set_bounding(Some(caps.clone()));
        c.set_permitted(Some(caps.clone()));
        c.set_effective(Some(caps));
        process.set_capabilities(Some(c));
    }

    let mut mounts = cfg.mounts().clone().unwrap_or_default();
    if spec.network == Network::Host {
        // Sharing the host's network means sharing its resolver too.
        mounts.push(built(
            MountBuilder::default()
                .destination("/etc/resolv.conf")
                .typ("bind")
                .source("/etc/resolv.conf")
                .options(vec!["rbind".into(), "ro".into()])
                .build(),
        )?);
    }
    cfg.set_mounts(Some(mounts));

    if let Some(a) = spec.network.attachment() {
        cfg.set_hooks(Some(built(
            HooksBuilder::default()
                .create_runtime(vec![attach_hook(a)?])
                .build(),
        )?));
    }
    let linux = cfg.linux_mut().as_mut().expect("default spec has linux");
    let mut ns: Vec<LinuxNamespace> = Vec::new();
    let mut types = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Cgroup,
    ];
    if spec.network != Network::Host {
        types.push(LinuxNamespaceType::Network);
    }
    if spec.user_namespace {
        types.push(LinuxNamespaceType::User);
        let map = built(
            LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(spec.id_base)
                .size(USERNS_IDS)
                .build(),
        )?;
        linux.set_uid_mappings(Some(vec![map]));
        linux.set_gid_mappings(Some(vec![map]));
    }
    for t in types {
        ns.push(built(LinuxNamespaceBuilder::default().typ(t).build())?);
    }
    linux.set_namespaces(Some(ns));
    linux.set_seccomp(Some(seccomp_profile()?));
    linux.set_cgroups_path(Some(format!("/vfarm/{}", spec.id).into()));

    let mut res = LinuxResourcesBuilder::default().devices(vec![built(
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build(),
    )?]);
    if let Some(m) = spec.memory {
        if m < 4 << 20 {
            return Err(bad("memory", "must be at least 4 MiB"));
        }
        let m = i64::try_from(m).map_err(|_| bad("memory", "too large"))?;
        // swap = memory: the instance cannot escape its limit into swap; over it, the OOM
        // killer picks a process inside the instance's cgroup, never one of the host's.
        res = res.memory(built(
            LinuxMemoryBuilder::default().limit(m).swap(m).build(),
        )?);
    }
    if let Some(c) = spec.cpus {
        if !(c.is_finite() && c >= 0.01) {
            return Err(bad("cpus", format!("`{c}` must be at least 0.01")));
        }
        let quota = (c * CPU_PERIOD_US as f64).round() as i64;
        res = res.cpu(built(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD_US)
                .build(),
        )?);
    }
    if let Some(p) = spec.pids {
        if p == 0 {
            return Err(bad("pids", "must be at least 1"));
        }
        let p = i64::try_from(p).map_err(|_| bad("pids", "too large"))?;
        res = res.pids(built(LinuxPidsBuilder::default().limit(p).build())?);
    }
    linux.set_resources(Some(built(res.build())?));
    Ok(cfg)
}

/// RFC 1123 host name; the rule lives in the domain core, the driver only re-checks what
/// it is handed.
pub fn validate_hostname(h: &str) -> Result<()> {
    vfarm_core::instance::validate_hostname(h).map_err(|e| bad("hostname", e.reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ImageInput;

    fn spec() -> InstanceSpec {
        InstanceSpec {
            id: "i1".into(),
            image: ImageInput {
                id: "abcd".into(),
                files: vec![],
                kernel: None,
                initrd: None,
            },
            hostname: "node-1".into(),
            cpus: Some(1.5),
            memory: Some(64 << 20),
            pids: Some(100),
            disk: None,
            env: vec![("A".into(), "b=c".into())],
            command: vec!["sh".into(), "-c".into(), "exit 7".into()],
            network: Network::None,
            user_namespace: false,
            id_base: 0,
            volatile: false,
            vm: Default::default(),
        }
    }

    /// On a site network: a network namespace of the container's own and the hook that puts
    /// the veth in it before the command starts; a link that is not vfarm's is refused.
    #[test]
    fn attached_instances_get_the_attach_hook() {
        let mut s = spec();
        s.user_namespace = true;
        let mut a = crate::Attachment {
            network: "lab".into(),
            address: "10.9.0.5".parse().unwrap(),
            prefix: 24,
            gateway: Some("10.9.0.1".parse().unwrap()),
            nameservers: vec!["10.9.0.1".parse().unwrap()],
            mac: "52:54:00:aa:bb:cc".into(),
            link: "vfh-0123456789a".into(),
            bridge: "vfbr-lab".into(),
        };
        s.network = Network::Attached(a.clone());
        let v = serde_json::to_value(render(&s).unwrap()).unwrap();
        let ns = &v["linux"]["namespaces"];
        let net = ns
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "network")
            .expect("a network namespace");
        assert!(net.get("path").is_none(), "{net}");
        let hook = &v["hooks"]["createRuntime"][0];
        assert_eq!(hook["path"], "/bin/sh");
        let args: Vec<&str> = hook["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            args[4..],
            [
                "vfh-0123456789a",
                "vfbr-lab",
                "10.9.0.5/24",
                "10.9.0.1",
                "52:54:00:aa:bb:cc"
            ]
        );
        a.link = "eth0; reboot".into();
        s.network = Network::Attached(a);
        assert!(matches!(
            render(&s),
            Err(DriverError::InvalidSpec {
                field: "network",
                ..
            })
        ));
        assert!(serde_json::to_value(render(&spec()).unwrap()).unwrap()["hooks"].is_null());
    }

    #[test]
    fn renders_limits_namespaces_hostname() {
        let v = serde_json::to_value(render(&spec()).unwrap()).unwrap();
        assert_eq!(v["hostname"], "node-1");
        assert_eq!(v["root"]["path"], "rootfs");
        assert_eq!(v["root"]["readonly"], false);
        assert_eq!(
            v["process"]["args"],
            serde_json::json!(["sh", "-c", "exit 7"])
        );
        assert!(v["process"]["env"]
            .as_array()
            .unwrap()
            .contains(&"A=b=c".into()));
        assert_eq!(v["process"]["terminal"], false);
        let r = &v["linux"]["resources"];
        assert_eq!(r["memory"]["limit"], 64 << 20);
        assert_eq!(r["memory"]["swap"], 64 << 20);
        assert_eq!(r["cpu"]["quota"], 150_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["pids"]["limit"], 100);
        assert_eq!(v["linux"]["cgroupsPath"], "/vfarm/i1");
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        for t in ["pid", "mount", "ipc", "uts", "network"] {
            assert!(ns.contains(&t), "{t} missing from {ns:?}");
        }
        assert!(!ns.contains(&"user"));
        let sc = &v["linux"]["seccomp"];
        assert_eq!(sc["defaultAction"], "SCMP_ACT_ALLOW");
        let denied = sc["syscalls"][0]["names"].to_string();
        for call in [
            "kexec_load",
            "init_module",
            "bpf",
            "mount",
            "unshare",
            "keyctl",
        ] {
            assert!(denied.contains(call), "{call} not denied: {denied}");
        }
        assert_eq!(sc["syscalls"][0]["action"], "SCMP_ACT_ERRNO");
        // No capability beyond the runtime's minimal default set.
        let caps = v["process"]["capabilities"]["bounding"].to_string();
        assert!(!caps.contains("CAP_SYS_ADMIN"), "{caps}");
        assert_eq!(v["process"]["noNewPrivileges"], true);
    }

    #[test]
    fn host_network_and_user_namespace() {
        let mut s = spec();
        s.network = Network::Host;
        s.user_namespace = true;
        s.id_base = 1 << 20;
        s.command.clear();
        let v = serde_json::to_value(render(&s).unwrap()).unwrap();
        let ns = v["linux"]["namespaces"].to_string();
        assert!(!ns.contains("network"));
        assert!(ns.contains("user"));
        assert_eq!(v["linux"]["uidMappings"][0]["size"], 65536);
        assert_eq!(v["linux"]["uidMappings"][0]["hostID"], 1 << 20);
        assert_eq!(v["linux"]["gidMappings"][0]["hostID"], 1 << 20);
        assert_eq!(v["linux"]["uidMappings"][0]["containerID"], 0);
        // With a private range root keeps its powers over ids, inside the namespace only.
        let caps = v["process"]["capabilities"].clone();
        for set in ["bounding", "effective", "permitted"] {
            let c = caps[set].to_string();
            assert!(
                c.contains("CAP_SETGID") && c.contains("CAP_DAC_OVERRIDE"),
                "{caps}"
            );
            assert!(
                !c.contains("CAP_SYS_ADMIN") && !c.contains("CAP_NET_RAW"),
                "{caps}"
            );
        }
        assert!(
            !caps["ambient"].to_string().contains("CAP_SETUID"),
            "{caps}"
        );
        // Without one (ids are the host's) it keeps the minimal set.
        s.id_base = 0;
        let v = serde_json::to_value(render(&s).unwrap()).unwrap();
        let bounding = v["process"]["capabilities"]["bounding"].to_string();
        assert!(!bounding.contains("CAP_SETUID"), "{bounding}");
        assert!(v["mounts"].to_string().contains("/etc/resolv.conf"));
        assert_eq!(v["process"]["args"][0], "/bin/sh");
    }

    #[test]
    fn refuses_bad_values_naming_the_field() {
        let mut s = spec();
        s.hostname = "-bad".into();
        assert!(matches!(
            render(&s),
            Err(DriverError::InvalidSpec {
                field: "hostname",
                ..
            })
        ));
        let mut s = spec();
        s.memory = Some(1024);
        assert!(matches!(
            render(&s),
            Err(DriverError::InvalidSpec {
                field: "memory",
                ..
            })
        ));
        let mut s = spec();
        s.cpus = Some(0.0);
        assert!(matches!(
            render(&s),
            Err(DriverError::InvalidSpec { field: "cpus", .. })
        ));
        let mut s = spec();
        s.id = "a/b".into();
        assert!(matches!(
            render(&s),
            Err(DriverError::InvalidSpec { field: "id", .. })
        ));
        let mut s = spec();
        s.env = vec![("A=B".into(), "x".into())];
        assert!(matches!(
            render(&s),
            Err(DriverError::InvalidSpec { field: "env", .. })
        ));
    }
}
