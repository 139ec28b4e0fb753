"""Typed results of the vfarm REST API (see docs/API.md).

Every class is a frozen dataclass built with ``from_json``: fields the API documents are
typed attributes; anything else the server sends lands in ``extra``, so a newer server with
more fields never breaks an older client.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Type, TypeVar

__all__ = [
    "Artifact",
    "AuditEntry",
    "Event",
    "ExecResult",
    "Grid",
    "GridMember",
    "Image",
    "Instance",
    "Job",
    "Operation",
    "Quota",
    "Snapshot",
    "Subscription",
    "SubscriptionUpdate",
    "Token",
    "Whoami",
]

T = TypeVar("T")


def _build(cls: Type[T], data: Any, **converted: Any) -> T:
    """`cls` from a JSON object: known fields by name (absent ones take their default),
    the rest into `extra`. `converted` overrides fields that need nested conversion."""
    if not isinstance(data, Mapping):
        raise TypeError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: Dict[str, Any] = {k: v for k, v in data.items() if k in names and k != "extra"}
    kwargs.update(converted)
    kwargs["extra"] = {k: v for k, v in data.items() if k not in names}
    return cls(**kwargs)


@dataclass(frozen=True)
class Whoami:
    """`GET /api/v1/whoami`: who the server thinks the caller is."""

    user: str
    method: str
    admin: bool = False
    token_id: Optional[str] = None
    # A certificate user: `user` is "<subject> issuer=<issuer>", these its two parts.
    subject: Optional[str] = None
    issuer: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "Whoami":
        return _build(cls, data)


@dataclass(frozen=True)
class Artifact:
    """One file of an image: a format (tar, raw, qcow2 …), its size and SHA-512."""

    format: str
    size: Optional[int] = None
    sha512: Optional[str] = None
    path: Optional[str] = None
    disk_size: Optional[int] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "Artifact":
        return _build(cls, data)


@dataclass(frozen=True)
class Image:
    """An image in the repository."""

    id: str
    name: Optional[str] = None
    summary: Optional[str] = None
    origin: Optional[str] = None
    created: Optional[str] = None
    os: Optional[str] = None
    os_version: Optional[str] = None
    arch: Optional[str] = None
    kernel: Optional[str] = None
    initrd: Optional[str] = None
    spec: Optional[Dict[str, Any]] = None
    artifacts: List[Artifact] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "Image":
        arts = data.get("artifacts") if isinstance(data, Mapping) else None
        return _build(cls, data, artifacts=[Artifact.from_json(a) for a in arts or []])


@dataclass(frozen=True)
class Operation:
    """Long-running work (an image build, an instance start): poll or wait on it."""

    id: str
    kind: Optional[str] = None
    status: str = "running"  # running, succeeded, failed
    target: Optional[str] = None
    error: Optional[str] = None
    result: Any = None
    created: Optional[str] = None
    updated: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status != "running"

    @classmethod
    def from_json(cls, data: Any) -> "Operation":
        return _build(cls, data)


@dataclass(frozen=True)
class Snapshot:
    """A snapshot of an instance."""

    name: str
    instance_id: Optional[str] = None
    created: Optional[str] = None
    size: Optional[int] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "Snapshot":
        return _build(cls, data)


@dataclass(frozen=True)
class Instance:
    """An instance (OCI container or VM). `snapshots` and the VM fields are only filled by
    `Client.instance(ref)` (`GET /instances/{ref}`), not by the list."""

    id: str
    state: str
    name: Optional[str] = None
    exit_code: Optional[int] = None
    error: Optional[str] = None
    image: Optional[str] = None
    image_name: Optional[str] = None
    image_revoked: Optional[bool] = None
    driver: Optional[str] = None
    owner: Optional[str] = None
    hostname: Optional[str] = None
    #: The address on its network, else its pool hostname's.
    address: Optional[str] = None
    #: The site network it is on (None: loopback only).
    network: Optional[str] = None
    #: `ssh vfarm@node07.example.org` for VMs with sshd on a network.
    ssh_command: Optional[str] = None
    created: Optional[str] = None
    started: Optional[str] = None
    uptime_secs: Optional[int] = None
    expires: Optional[str] = None
    expires_in_secs: Optional[int] = None
    snapshots: Optional[List[Snapshot]] = None
    spec: Optional[Dict[str, Any]] = None
    accel: Optional[str] = None
    accel_note: Optional[str] = None
    vcpus: Optional[int] = None
    memory_mib: Optional[int] = None
    profile: Optional[str] = None
    ssh: Any = None
    stats: Any = None
    host: Optional[str] = None
    placement: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "Instance":
        snaps = data.get("snapshots") if isinstance(data, Mapping) else None
        conv: Dict[str, Any] = {}
        if snaps is not None:
            conv["snapshots"] = [Snapshot.from_json(s) for s in snaps]
        return _build(cls, data, **conv)


@dataclass(frozen=True)
class ExecResult:
    """What a command run with `Client.exec` did."""

    exit_code: Optional[int]
    stdout: str = ""
    stderr: str = ""
    #: Killed at its time limit (exit code 137).
    timed_out: bool = False
    #: Output past 8 MiB per stream was dropped.
    truncated: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "ExecResult":
        return _build(cls, data)


@dataclass(frozen=True)
class Quota:
    """The caller's quota: limits (absent = unlimited) and current usage."""

    owner: str
    limits: Dict[str, Any] = field(default_factory=dict)
    usage: Dict[str, Any] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "Quota":
        return _build(cls, data)


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log: who did what to which object, and how it ended."""

    seq: Optional[int] = None
    at: Optional[str] = None
    actor: Optional[str] = None
    method: Optional[str] = None
    action: Optional[str] = None
    object: Optional[str] = None
    outcome: Optional[str] = None
    detail: Any = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "AuditEntry":
        return _build(cls, data)


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event from `GET /api/v1/events`.

    `event` is the SSE event type (`instance`, `instance-removed`, …), `data` the parsed JSON
    payload (the raw text when it is not JSON), `id` the SSE id if the server sent one.
    """

    event: str
    data: Any
    id: Optional[str] = None

    @property
    def instance(self) -> Optional[Instance]:
        """The instance of an `instance` event; None for other events."""
        if self.event == "instance" and isinstance(self.data, Mapping):
            return Instance.from_json(self.data)
        return None

    @staticmethod
    def parse(event: str, data_lines: List[str], id: Optional[str]) -> "Event":
        text = "\n".join(data_lines)
        try:
            data: Any = json.loads(text)
        except ValueError:
            data = text
        return Event(event=event or "message", data=data, id=id)


@dataclass(frozen=True)
class Network:
    """One of the site's instance networks (serve.toml `[[networks]]`). `leases` (the
    addresses of instances on it) are listed for admins only."""

    name: str
    kind: str
    subnet: str
    bridge: str = ""
    gateway: Optional[str] = None
    nameservers: List[str] = field(default_factory=list)
    isolated: bool = False
    nat: bool = False
    default: bool = False
    up: bool = False
    leases: List[Dict[str, Any]] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "Network":
        return _build(cls, data)


@dataclass(frozen=True)
class Host:
    """A physical host of the inventory (several hosts): a node that joined, or one with a
    join token not yet used (`state` pending | up | down). Capacity is what its node reported;
    `used_*` is what placement promised there."""

    name: str
    state: str
    drained: bool = False
    dn: Optional[str] = None
    url: Optional[str] = None
    cpus: int = 0
    memory_mib: int = 0
    disk_mib: int = 0
    features: List[str] = field(default_factory=list)
    running: int = 0
    instances: int = 0
    used_cpus_milli: int = 0
    used_memory_mib: int = 0
    lost: int = 0
    created: Optional[str] = None
    joined: Optional[str] = None
    last_heartbeat: Optional[str] = None
    token_expires: Optional[str] = None
    # The node's `vfarm doctor` report and its QEMU accelerator ("kvm", "tcg"), if it sends one.
    checks: Optional[Dict[str, Any]] = None
    accelerator: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "Host":
        return _build(cls, data)


@dataclass(frozen=True)
class HostToken:
    """A one-time join token for `vfarm node` ($VFARM_JOIN_TOKEN or --token-file; shown once)."""

    name: str
    token: str
    expires: str
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "HostToken":
        return _build(cls, data)


@dataclass(frozen=True)
class Migration:
    """What moving an instance between nodes did: a VM live, an oci instance cold."""

    id: str
    to: str
    downtime_ms: int
    total_ms: int
    storage: Optional[str] = None
    ram_bytes: int = 0
    disk_bytes: int = 0
    state: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "Migration":
        # `from` is a Python keyword: it stays in `extra` and is read through `source`.
        return _build(cls, data)

    @property
    def source(self) -> Optional[str]:
        """The node it left."""
        return self.extra.get("from")


@dataclass(frozen=True)
class Job:
    """A batch job. `spec`, `events` are only filled by `Client.job(id)`; `warnings` only by
    `Client.submit_job` (what the request asks for that vfarm does not apply)."""

    id: int
    state: str
    name: Optional[str] = None
    owner: Optional[str] = None
    queue: Optional[str] = None
    priority: Optional[int] = None
    reason: Optional[str] = None
    exit_code: Optional[int] = None
    error: Optional[str] = None
    backend: Optional[str] = None
    driver: Optional[str] = None
    image: Optional[str] = None
    cpus: Optional[str] = None
    memory_mib: Optional[int] = None
    walltime_secs: Optional[int] = None
    submitted: Optional[str] = None
    started: Optional[str] = None
    ended: Optional[str] = None
    wait_secs: Optional[float] = None
    run_secs: Optional[float] = None
    outputs: List[Dict[str, Any]] = field(default_factory=list)
    spec: Optional[Dict[str, Any]] = None
    events: Optional[List[Dict[str, Any]]] = None
    warnings: List[str] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "Job":
        return _build(cls, data)


@dataclass(frozen=True)
class GridMember:
    """One member of a grid: an instance of the grid's owner in one role (`index` from 1).
    `state` is the instance's, `gone` when it was destroyed by itself."""

    role: str
    index: int
    instance_id: str
    state: str
    name: Optional[str] = None
    hostname: Optional[str] = None
    address: Optional[str] = None
    ssh_command: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "GridMember":
        return _build(cls, data)


@dataclass(frozen=True)
class Grid:
    """A virtual grid: members in roles from one grid file, with one expiry (`state`
    creating | up | deleting | failed). `stages` are the roles in the order they come up;
    `network` the network its members are on (its own, `g-<n>`, unless the file names one)."""

    name: str
    owner: str
    state: str
    network: Optional[str] = None
    expires: Optional[str] = None
    created: Optional[str] = None
    error: Optional[str] = None
    stages: List[List[str]] = field(default_factory=list)
    members: List[GridMember] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "Grid":
        members = data.get("members") if isinstance(data, Mapping) else None
        return _build(cls, data, members=[GridMember.from_json(m) for m in members or []])

    def role(self, name: str) -> List[GridMember]:
        """The members of role `name`, by index."""
        return sorted((m for m in self.members if m.role == name), key=lambda m: m.index)


@dataclass(frozen=True)
class Token:
    """A bearer token (`/api/v1/tokens`). `token`, the secret, is set only in the answer of
    `Client.create_token`: it is never shown again."""

    id: str
    user: str
    created: str
    name: Optional[str] = None
    expires: Optional[str] = None
    revoked: Optional[str] = None
    last_used: Optional[str] = None
    token: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "Token":
        return _build(cls, data)


@dataclass(frozen=True)
class Subscription:
    """A subscription to a signed image list (admins). `version` is its accepted list's, in
    `Client.subscriptions()`; `endorsers` are `{"dn", "ca"}` objects."""

    id: str
    url: str
    ca_dir: str
    auto_cache: bool = True
    list_identifier: Optional[str] = None
    title: Optional[str] = None
    hook: Optional[str] = None
    created: Optional[str] = None
    updated: Optional[str] = None
    checked: Optional[str] = None
    last_error: Optional[str] = None
    revoked: Optional[str] = None
    endorsers: List[Dict[str, Any]] = field(default_factory=list)
    version: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "Subscription":
        return _build(cls, data)


@dataclass(frozen=True)
class SubscriptionUpdate:
    """What one update of a subscription did: `result` is `accepted`, `unchanged` or
    `refused` (then `refused` holds `code` and `reason`); a refusal is a report, not an
    error."""

    subscription: str
    url: str
    result: str
    version: Optional[str] = None
    refused: Optional[Dict[str, Any]] = None
    new: List[str] = field(default_factory=list)
    replaced: List[str] = field(default_factory=list)
    expired: List[str] = field(default_factory=list)
    cached: List[str] = field(default_factory=list)
    failed: List[Dict[str, Any]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "SubscriptionUpdate":
        return _build(cls, data)
