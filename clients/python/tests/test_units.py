"""Unit tests of the parts that need no server: the SSE parser and the result types."""

from __future__ import annotations

import io

from vfarm_client import EventStream, Host, Image, Instance, Migration, VfarmError


class FakeResponse(io.BytesIO):
    """Just what EventStream reads: readline() and close()."""


def events(raw: bytes):
    return list(EventStream(FakeResponse(raw)))


def test_sse_events_comments_and_multiline_data():
    got = events(
        b": keep-alive\n\n"
        b'event: instance\ndata: {"id": "abc", "state": "running", "new_field": 1}\n\n'
        b'event: instance-removed\r\nid: 7\r\ndata: {"id": "abc"}\r\n\r\n'
        b"data: line one\ndata: line two\n\n"
        b"retry: 1000\n\n"
        b"event: tail\ndata: no blank line before the end"
    )
    assert [e.event for e in got] == ["instance", "instance-removed", "message", "tail"]
    inst = got[0].instance
    assert inst is not None and (inst.id, inst.state) == ("abc", "running")
    assert inst.extra == {"new_field": 1}
    assert got[1].id == "7" and got[1].data == {"id": "abc"} and got[1].instance is None
    assert got[2].data == "line one\nline two"
    assert got[3].data == "no blank line before the end"


def test_closed_stream_ends_iteration():
    s = EventStream(FakeResponse(b"event: instance\ndata: {}\n\n"))
    s.close()
    assert list(s) == []


def test_models_keep_unknown_fields_and_convert_nested_ones():
    img = Image.from_json(
        {
            "id": "x",
            "name": "minbase",
            "artifacts": [{"format": "tar", "size": 3, "zz": 1}],
            "yy": 2,
        }
    )
    assert img.artifacts[0].format == "tar" and img.artifacts[0].extra == {"zz": 1}
    assert img.extra == {"yy": 2}
    inst = Instance.from_json(
        {"id": "i", "state": "running", "snapshots": [{"name": "s1", "instance_id": "i"}]}
    )
    assert inst.snapshots is not None and inst.snapshots[0].name == "s1"
    assert Instance.from_json({"id": "i", "state": "created"}).snapshots is None


def test_error_text_names_status_code_and_field():
    e = VfarmError(400, "invalid_request", "memory `lots` is not a size", "memory")
    assert str(e) == "HTTP 400 invalid_request: memory `lots` is not a size (field `memory`)"
    assert (e.status, e.code, e.field) == (400, "invalid_request", "memory")
    assert str(VfarmError(0, "timeout", "no answer")) == "timeout: no answer"


def test_host_and_migration_results():
    h = Host.from_json(
        {"name": "node1", "state": "up", "drained": False, "cpus": 2, "features": ["oci", "qemu"],
         "instances": 3, "used_cpus_milli": 600, "cert_serial": "0a"}
    )
    assert (h.name, h.state, h.cpus, h.instances, h.used_cpus_milli) == ("node1", "up", 2, 3, 600)
    assert h.features == ["oci", "qemu"] and h.extra == {"cert_serial": "0a"}
    assert h.accelerator is None and h.checks is None
    k = Host.from_json({"name": "node2", "state": "up", "accelerator": "kvm",
                        "checks": {"core_ok": True, "checks": []}})
    assert (k.accelerator, k.checks["core_ok"], k.extra) == ("kvm", True, {})
    m = Migration.from_json(
        {"id": "ab12", "from": "node1", "to": "node2", "storage": "copied", "downtime_ms": 14,
         "total_ms": 920, "ram_bytes": 1, "disk_bytes": 2, "state": "running"}
    )
    assert (m.source, m.to, m.downtime_ms, m.storage) == ("node1", "node2", 14, "copied")


def test_network_and_an_instance_on_one():
    from vfarm_client import Instance, Network

    n = Network.from_json(
        {"name": "lab", "kind": "nat", "subnet": "10.77.0.0/24", "bridge": "vfbr-lab",
         "gateway": "10.77.0.1", "nameservers": ["10.77.0.1"], "isolated": True, "nat": True,
         "default": True, "up": True, "leases": [], "mtu": 1500}
    )
    assert (n.name, n.kind, n.gateway, n.default, n.extra) == (
        "lab", "nat", "10.77.0.1", True, {"mtu": 1500})
    i = Instance.from_json({"id": "ab12", "state": "running", "network": "lab",
                            "address": "10.77.0.5", "ssh_command": "ssh vfarm@10.77.0.5"})
    assert (i.network, i.address, i.ssh_command) == ("lab", "10.77.0.5", "ssh vfarm@10.77.0.5")


def test_exec_result_says_when_it_was_cut_short():
    from vfarm_client.models import ExecResult

    r = ExecResult.from_json(
        {"exit_code": 137, "stdout": "", "stderr": "", "timed_out": True, "truncated": False}
    )
    assert (r.exit_code, r.timed_out, r.truncated, r.extra) == (137, True, False, {})
    assert ExecResult.from_json({"exit_code": 0}).timed_out is False


def test_next_link_is_read_from_the_link_header():
    from vfarm_client.client import _next_link

    assert _next_link(['</api/v1/instances?limit=2&cursor=ab>; rel="next"']) == (
        "/api/v1/instances?limit=2&cursor=ab"
    )
    assert _next_link(['</a>; rel="prev", </b>; rel=next']) == "/b"
    assert _next_link(['</a>; rel="prev"']) is None
    assert _next_link([]) is None
