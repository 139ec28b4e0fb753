"""Python client for the vfarm REST API.

from vfarm_client import Client
c = Client("http://127.0.0.1:8750", token="vft_…")
inst = c.create_instance("minbase", command=["sleep", "infinity"])
print(c.exec(inst.id, "cat /etc/debian_version").stdout)
c.destroy(inst.id)
"""

from .client import Client, EventStream, Pending
from .errors import VfarmError
from .models import (
    Artifact,
    AuditEntry,
    Event,
    ExecResult,
    Grid,
    GridMember,
    Host,
    Network,
    HostToken,
    Image,
    Instance,
    Job,
    Migration,
    Operation,
    Quota,
    Snapshot,
    Subscription,
    SubscriptionUpdate,
    Token,
    Whoami,
)

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "AuditEntry",
    "Client",
    "Event",
    "EventStream",
    "ExecResult",
    "Grid",
    "GridMember",
    "Host",
    "HostToken",
    "Network",
    "Image",
    "Instance",
    "Job",
    "Migration",
    "Operation",
    "Pending",
    "Quota",
    "Snapshot",
    "Subscription",
    "SubscriptionUpdate",
    "Token",
    "VfarmError",
    "Whoami",
]
