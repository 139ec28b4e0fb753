//! Helpers shared by the black-box test binaries of `vfarm`.

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, Once, OnceLock};

/// `vfarm serve` on an ephemeral loopback port, killed on drop.
pub struct Server {
    child: Proc,
    pub base: String,
    data: PathBuf,
    /// Environment given to the service and to its CLI helpers (`token_for`).
    env: Vec<(String, String)>,
}

impl Server {
    pub fn start(data: &Path) -> Server {
        Server::start_with(data, &[])
    }

    /// `vfarm serve` with extra arguments (`--admin NAME`, `--config FILE` …).
    pub fn start_with(data: &Path, extra: &[&str]) -> Server {
        Server::start_env(data, extra, &[])
    }

    /// `vfarm serve` with extra arguments and environment (e.g. a shared database).
    pub fn start_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vfarm"));
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("VFARM_DATA_DIR", data)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
        // `serve` prints its address as its first line on stdout.
        let (child, base) = serving(cmd);
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");
        Server {
            child,
            base,
            data: data.to_path_buf(),
            env,
        }
    }

    /// A new bearer token (`vfarm token create`): every `/api/v1/*` request needs one.
    pub fn token(&self) -> String {
        self.token_for("vfarm-tests")
    }

    /// A new bearer token for `user`.
    pub fn token_for(&self, user: &str) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_vfarm"))
            .args(["token", "create", "--user", user, "--name", "tests"])
            .env("VFARM_DATA_DIR", &self.data)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run vfarm token create");
        assert!(
            out.status.success(),
            "vfarm token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// An HTTP client that sends a fresh token with every request.
    pub fn client(&self) -> reqwest::blocking::Client {
        self.client_for("vfarm-tests")
    }

    /// An HTTP client that sends a fresh token of `user` with every request.
    pub fn client_for(&self, user: &str) -> reqwest::blocking::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", self.token_for(user)).parse().unwrap(),
        );
        reqwest::blocking::Client::builder()
            .default_headers(headers)
            .timeout(std::time::Duration::from_secs(600))
            .build()
            .unwrap()
    }
}

impl Server {
    /// The service's process id (to kill it the hard way).
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Kill with SIGKILL and reap: no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }
}

/// A child process, killed and reaped on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start a `vfarm serve` (or `node`) command and wait for its first line on stdout, which
/// names where it serves: the process and that URL (`http://…` or `https://…`, no final `/`).
pub fn serving(mut cmd: Command) -> (Proc, String) {
    // A service logs each request at info level; the suite's output would carry every
    // request of every test service. A test that reads the log sets or removes VFARM_LOG.
    if std::env::var_os("VFARM_LOG").is_none() && !cmd.get_envs().any(|(k, _)| k == "VFARM_LOG") {
        cmd.env("VFARM_LOG", "warn");
    }
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("start vfarm");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read the serving line");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim_end_matches('/')
        .to_string();
    (Proc(child), url)
}

/// The state store `vfarm` uses for `data`: SQLite in the data dir, or, when the suite runs
/// on PostgreSQL (`VFARM_DATABASE`, `VFARM_DATABASE_SCHEMA=per-data-dir`), the data dir's
/// schema there (named as `vfarm` names it: `d_` and 16 hex digits of its path's sha256).
pub fn store_of(data: &Path) -> vfarm_store::Store {
    match std::env::var("VFARM_DATABASE")
        .ok()
        .filter(|u| !u.is_empty())
    {
        None => vfarm_store::Store::open(&data.join("state.db")).unwrap(),
        Some(url) => {
            use sha2::Digest;
            assert_eq!(
                std::env::var("VFARM_DATABASE_SCHEMA").as_deref(),
                Ok("per-data-dir"),
                "the suite on PostgreSQL needs VFARM_DATABASE_SCHEMA=per-data-dir"
            );
            let dir = std::fs::canonicalize(data).unwrap();
            let h = sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes());
            vfarm_store::Store::open_postgres(&url, &format!("d_{}", hex::encode(&h[..8]))).unwrap()
        }
    }
}

/// The tests' scratch directory (cargo's per-target tmp dir, kept between runs).
/// A name no other test run uses (pid and time), for instances and data dirs.
pub fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{:x}{:x}", std::process::id() & 0xfff, n)
}

pub fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Fail loudly, naming the tool, when a component the test drives is not installed.
pub fn require(tool: &str) {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join(tool).is_file());
    assert!(
        found,
        "this test needs `{tool}`, which is not installed: run scripts/setup.sh"
    );
}

/// A Debian bookworm minbase rootfs tarball, built once with mmdebstrap and kept in the
/// target dir, so every test binary that runs OCI instances shares one bootstrap.
pub fn minbase_tar() -> PathBuf {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        require("runc");
        let out = tmp().join("minbase-bookworm.tar");
        if out.is_file() {
            return out;
        }
        require("mmdebstrap");
        // Built under a private name and renamed: test binaries racing here each finish a
        // whole tarball and the last rename wins; nobody reads a partial one.
        let work = tmp().join(format!(".mk-{}", std::process::id()));
        std::fs::create_dir_all(&work).unwrap();
        // mmdebstrap chooses the format from the name: build as *.tar, then move.
        let t = work.join("minbase-bookworm.tar");
        let st = Command::new("mmdebstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&t)
            .status()
            .unwrap();
        assert!(st.success(), "mmdebstrap failed: {st}");
        std::fs::rename(&t, &out).unwrap();
        let _ = std::fs::remove_dir_all(&work);
        out
    })
    .clone()
}

/// `vfarm` on a data dir, as CI runs it (no terminal input).
pub fn vfarm_cmd(data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vfarm"));
    c.env("VFARM_DATA_DIR", data)
        .env("CI", "true")
        .stdin(Stdio::null());
    c
}

/// Run `vfarm ARGS` on a data dir and collect its output.
pub fn vfarm(data: &Path, args: &[&str]) -> Output {
    vfarm_cmd(data).args(args).output().expect("run vfarm")
}

/// stdout then stderr, for failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        text(out)
    );
}

/// One VM at a time per test binary: the machine has 2 cores and TCG is slow enough already.
pub fn one_vm() -> MutexGuard<'static, ()> {
    static VMS: Mutex<()> = Mutex::new(());
    VMS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh scratch directory `<tmp>/<name>-<pid>` (an older one of this process removed).
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = tmp().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    remove_at_exit(&dir);
    dir
}

/// Directories to delete when this test binary exits.
static AT_EXIT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Set by the panic hook: a failing test's data dirs are kept as evidence.
static PANICKED: AtomicBool = AtomicBool::new(false);

/// Delete `dir` when this test binary exits, unless a test panicked or `VFARM_KEEP_TEST_DATA`
/// is set. Shared fixtures (images built once per binary) have no owner to drop them, and a
/// whole suite's leftovers (several GB of images) filled CI's disk half-way through the run.
pub fn remove_at_exit(dir: &Path) {
    static HOOKS: Once = Once::new();
    HOOKS.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.store(true, Ordering::SeqCst);
            previous(info)
        }));
        // The test harness has no "after all tests" hook; `exit` (which ends every test
        // binary, pass or fail) runs atexit handlers.
        #[allow(unsafe_code)]
        // SAFETY: the handler is a plain `extern "C" fn()` that never unwinds: it takes a lock
        // without unwrapping and ignores every I/O error.
        let registered = unsafe { libc::atexit(remove_registered) } == 0;
        assert!(registered, "atexit refused the test data cleanup");
    });
    if let Ok(mut dirs) = AT_EXIT.lock() {
        dirs.push(dir.to_path_buf());
    }
}

extern "C" fn remove_registered() {
    let Ok(dirs) = AT_EXIT.lock() else { return };
    if PANICKED.load(Ordering::SeqCst) || std::env::var_os("VFARM_KEEP_TEST_DATA").is_some() {
        for d in dirs.iter().filter(|d| d.exists()) {
            eprintln!("test data kept: {}", d.display());
        }
        return;
    }
    for d in dirs.iter() {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Build a bootable bookworm image (`--boot vm`, qcow2) named `name` in `data`, with `extra`
/// build flags, after checking that everything a VM test drives is installed.
pub fn build_bootable(data: &Path, name: &str, extra: &[&str]) {
    for tool in ["mmdebstrap", "qemu-system-x86_64", "qemu-img", "busybox"] {
        require(tool);
    }
    let mut args = vec![
        "image", "build", "--suite", "bookworm", "--boot", "vm", "--format", "qcow2", "--name",
        name, "--output", "json",
    ];
    args.extend_from_slice(extra);
    assert_success(&vfarm(data, &args), "bootable image build");
}

/// Live (not zombie: they hold nothing) QEMU processes whose command line names `needle`,
/// e.g. a data dir.
pub fn live_qemus(needle: &str) -> Vec<String> {
    let ps = Command::new("ps")
        .args(["-eo", "stat,args"])
        .output()
        .expect("run ps");
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.contains("qemu-system") && l.contains(needle) && !l.starts_with('Z'))
        .map(str::to_string)
        .collect()
}

/// A data dir the tests drive `vfarm` on (with the user's output and queue settings
/// removed from the environment, so only the test's flags count).
pub struct Vf {
    pub data: PathBuf,
}

impl Vf {
    /// `data` (made if missing) with the minbase rootfs imported as the image `minbase`.
    pub fn with_minbase(data: PathBuf) -> Vf {
        std::fs::create_dir_all(&data).unwrap();
        let vf = Vf { data };
        vf.ok(&[
            "image",
            "import",
            minbase_tar().to_str().unwrap(),
            "--name",
            "minbase",
        ]);
        vf
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vfarm"));
        c.env("VFARM_DATA_DIR", &self.data)
            .env_remove("VFARM_OUTPUT")
            .env_remove("VFARM_JOBS_CONFIG")
            .args(args)
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Run, expect success, return stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "vfarm {args:?} failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Run with `--output json`, expect success, parse stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
}

/// What is left on the host of network `name` made by vfarm: its bridge, nftables table,
/// dnsmasq and state dir.
pub fn net_pieces(name: &str) -> Vec<String> {
    let mut left = Vec::new();
    let br = format!("vfbr-{name}");
    if Command::new("ip")
        .args(["link", "show", &br])
        .output()
        .unwrap()
        .status
        .success()
    {
        left.push(format!("bridge {br}"));
    }
    let table = format!("table ip vfarm_{}", name.replace('-', "_"));
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    assert!(tables.status.success(), "nft list tables: {tables:?}");
    if String::from_utf8_lossy(&tables.stdout)
        .lines()
        .any(|l| l.trim() == table)
    {
        left.push(table);
    }
    let arg = format!("--interface={br}");
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            if c.split(|b| *b == 0).any(|a| a == arg.as_bytes()) {
                left.push(format!("dnsmasq {arg} (pid {:?})", e.file_name()));
            }
        }
    }
    let dir = Path::new("/run/vfarm/net").join(name);
    if dir.exists() {
        left.push(format!("state dir {}", dir.display()));
    }
    left
}

/// An HTTP server in perl (perl-base is in every Debian image) on port 8080 answering every
/// request with "hello from NAME"; as PID 1 it must catch SIGTERM itself to stop promptly.
pub fn http_server_script(name: &str) -> String {
    format!(
        "$SIG{{TERM}}=sub{{exit 0}}; $s=IO::Socket::INET->new(LocalPort=>8080,Listen=>16,ReuseAddr=>1) or die $!; \
         while($c=$s->accept){{<$c>; print $c \"HTTP/1.0 200 OK\\r\\n\\r\\nhello from {name}\\n\"; close $c}}"
    )
}

/// [`http_server_script`] as an instance's command.
pub fn http_server_cmd(name: &str) -> Vec<String> {
    ["perl", "-MIO::Socket::INET", "-e"]
        .map(String::from)
        .into_iter()
        .chain([http_server_script(name)])
        .collect()
}

/// `bash -c FETCH HOST`: GET http://HOST:8080/ with bash alone (no HTTP client in minbase).
pub const FETCH: &str =
    "exec 3<>/dev/tcp/$0/8080 && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3";
