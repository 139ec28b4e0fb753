"""Fixtures: a real `vfarm serve` (plain HTTP on loopback, and one with TLS and client
certificates from a test CA made by `vfarm ca`), each on a fresh data dir with the minbase
image imported, and tokens made by `vfarm token create`.

The binary is `$VFARM_BIN` (default: `debug/vfarm` in `$CARGO_TARGET_DIR` or this
repository's `target/`). A missing component (the binary, runc, mmdebstrap to build the
minbase tarball) fails the tests loudly, naming it; nothing is skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import subprocess
import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

from vfarm_client import Client

REPO = Path(__file__).resolve().parents[3]
SERVE_LINE = re.compile(r"serving on (https?)://([0-9.]+|\[[0-9a-f:]+\]|[\w.-]+):(\d+)")

CA_DN = "/C=XX/O=vfarm test/CN=vfarm test CA"
ALICE_DN = "/C=XX/O=vfarm test/CN=Alice"
BOB_DN = "/C=XX/O=vfarm test/CN=Bob"
ADMIN_DN = "/C=XX/O=vfarm test/CN=Site Admin"


def issued(dn: str) -> str:
    """A certificate user as the service names it: its subject with its issuer (the test CA)."""
    return f"{dn} issuer={CA_DN}"


def require(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.fail(f"these tests need `{tool}`, which is not installed: run scripts/setup.sh")
    return path


def vfarm_bin() -> str:
    b = os.environ.get("VFARM_BIN") or str(target_dir() / "debug" / "vfarm")
    if not (os.path.isfile(b) and os.access(b, os.X_OK)):
        pytest.fail(f"no vfarm binary at {b}: build it (cargo build -p vfarm) or set VFARM_BIN")
    return b


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")


def target_tmp() -> Path:
    return target_dir() / "tmp"


def minbase_tar() -> Path:
    """The Debian bookworm minbase tarball the Rust tests leave in the target dir; built
    with mmdebstrap (under a private name, then renamed) when it is not there."""
    env = os.environ.get("VFARM_MINBASE_TAR")
    if env:
        if not os.path.isfile(env):
            pytest.fail(f"VFARM_MINBASE_TAR={env} does not exist")
        return Path(env)
    out = target_tmp() / "minbase-bookworm.tar"
    if out.is_file():
        return out
    require("mmdebstrap")
    work = target_tmp() / f".mk-py-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    t = work / "minbase-bookworm.tar"
    r = subprocess.run(
        ["mmdebstrap", "--variant=minbase", "bookworm", str(t)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if r.returncode != 0:
        pytest.fail(f"mmdebstrap failed ({r.returncode}):\n{r.stderr[-3000:]}")
    os.replace(t, out)
    shutil.rmtree(work, ignore_errors=True)
    return out


def work_dir(name: str) -> Path:
    """A fresh directory under target/tmp: the instances' unprivileged root (a user
    namespace's host id) must be able to traverse every parent of the data dir, which pytest's
    own 0700 temporary directories do not allow."""
    target_tmp().mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix=f"py-{name}-", dir=target_tmp()))
    d.chmod(0o755)  # mkdtemp makes it 0700
    return d


def vfarm(data: Path, *args: str, check: bool = True, timeout: float = 300) -> str:
    """Run `vfarm ARGS` on a data dir; its stdout (fails the test on a non-zero exit)."""
    env = dict(os.environ, VFARM_DATA_DIR=str(data), CI="true")
    r = subprocess.run(
        [vfarm_bin(), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and r.returncode != 0:
        pytest.fail(f"vfarm {' '.join(args)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r.stdout


def new_token(data: Path, user: str) -> str:
    tok = vfarm(data, "token", "create", "--user", user, "--name", "pytest").strip()
    assert tok.startswith("vft_"), f"unexpected token output {tok!r}"
    return tok


class Server:
    """`vfarm serve --listen 127.0.0.1:0` on `data`, its address read from the first
    stdout line; stopped (and every instance it left destroyed) by `stop()`."""

    def __init__(self, data: Path, extra: Sequence[str] = ()):
        self.data = data
        self.log = data.parent / f"{data.name}-serve.log"
        env = dict(os.environ, VFARM_DATA_DIR=str(data), CI="true")
        self._logf = open(self.log, "w")
        self.proc = subprocess.Popen(
            [vfarm_bin(), "serve", "--listen", "127.0.0.1:0", *extra],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._logf,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = SERVE_LINE.search(line)
        if not m:
            self.proc.kill()
            self.proc.wait()
            self._logf.close()
            pytest.fail(f"vfarm serve did not say where it serves: {line!r}\n{self.log_tail()}")
        self.scheme, self.host, self.port = m.group(1), m.group(2), int(m.group(3))
        # Whatever else it prints must not fill the pipe and block it.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text()[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                # An event stream the server has not yet noticed is gone (it notices at the
                # next keep-alive) holds its graceful shutdown up: do not wait for that.
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()
        # Leave nothing running on the machine: take down the grids the tests left (with
        # their own networks), then destroy the other instances.
        out = vfarm(self.data, "--output", "json", "grid", "ls", check=False)
        try:
            grids: List[Dict[str, object]] = json.loads(out or "[]")
        except ValueError:
            grids = []
        for g in grids:
            vfarm(self.data, "grid", "down", str(g["name"]), check=False)
        out = vfarm(self.data, "--output", "json", "instance", "ls", check=False)
        try:
            left: List[Dict[str, object]] = json.loads(out or "[]")
        except ValueError:
            left = []
        for inst in left:
            vfarm(self.data, "instance", "destroy", str(inst["id"]), check=False)
        # The data dir holds hundreds of MB of image; remove it unless something is still
        # mounted below it (never delete through a mount point).
        prefix = str(self.data) + "/"
        with open("/proc/self/mountinfo") as f:
            mounted = [ln.split()[4] for ln in f if ln.split()[4].startswith(prefix)]
        if not mounted:
            shutil.rmtree(self.data, ignore_errors=True)


def _remove_work_dir(root: Path) -> None:
    """The fixture's work dir, once the server removed its data dir (it keeps it while
    anything is mounted below)."""
    if not (root / "data").exists():
        shutil.rmtree(root, ignore_errors=True)


def _prepare(data: Path) -> None:
    require("runc")
    data.mkdir(parents=True)
    vfarm(data, "image", "import", str(minbase_tar()), "--name", "minbase")


class Plain:
    """The plain-HTTP service and its users' tokens."""

    def __init__(self, server: Server, tokens: Dict[str, str]):
        self.server = server
        self.url = server.url
        self.tokens = tokens

    def client(self, user: Optional[str]) -> Client:
        return Client(self.url, token=self.tokens[user] if user else None)


@pytest.fixture(scope="session")
def plain(tmp_path_factory: pytest.TempPathFactory):
    root = work_dir("plain")
    data = root / "data"
    _prepare(data)
    # dora has a quota of one instance and one CPU (the 409 path); the others are unlimited.
    (data / "serve.toml").write_text('[quotas.owners."dora"]\ninstances = 1\ncpus = 1.0\n')
    tokens = {u: new_token(data, u) for u in ("alice", "bob", "boss", "dora")}
    srv = Server(data, ["--admin", "boss"])
    try:
        yield Plain(srv, tokens)
    finally:
        srv.stop()
        _remove_work_dir(root)


class Tls:
    """The HTTPS service with a test CA: user certificates per name, the CA file, and a
    token user (carol)."""

    def __init__(self, server: Server, root: Path, data: Path, carol: str):
        self.server = server
        # The host certificate names localhost, which resolves to the server's loopback.
        self.url = f"https://localhost:{server.port}"
        self.ca = str(data / "ca" / "ca.pem")
        self.root = root
        self.carol = carol

    def client(self, user: Optional[str]) -> Client:
        if user is None:
            return Client(self.url, ca=self.ca)
        d = self.root / user
        return Client(
            self.url, cert=str(d / "usercert.pem"), key=str(d / "userkey.pem"), ca=self.ca
        )


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory):
    require("runc")
    root = work_dir("tls")
    data = root / "data"
    _prepare(data)
    vfarm(data, "ca", "init", "--subject", CA_DN)
    vfarm(data, "ca", "issue-host", "localhost", "--out", str(root / "srv"))
    for name, dn in (("alice", ALICE_DN), ("bob", BOB_DN), ("admin", ADMIN_DN)):
        vfarm(data, "ca", "issue-user", dn, "--out", str(root / name))
    carol = new_token(data, "carol")
    srv = Server(
        data,
        [
            "--tls-cert",
            str(root / "srv" / "hostcert.pem"),
            "--tls-key",
            str(root / "srv" / "hostkey.pem"),
            "--client-ca-dir",
            str(data / "ca" / "certificates"),
            "--admin",
            ADMIN_DN,
        ],
    )
    assert srv.scheme == "https", f"the TLS server said {srv.url}"
    try:
        yield Tls(srv, root, data, carol)
    finally:
        srv.stop()
        _remove_work_dir(root)
