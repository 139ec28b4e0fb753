"""Unit tests of the parts that need no server: the SSE parser and the result types."""

from __future__ import annotations

import io

import pytest

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


class _Recorder:
    """A one-shot HTTP server on loopback: answers every request with `status` and `body`
    and keeps what it was sent (method, path, JSON body)."""

    def __init__(self, status: int, body: object):
        import http.server
        import json
        import threading

        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                seen.append((self.command, self.path, json.loads(raw) if raw else None))
                out = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


GRID_JSON = {
    "name": "web", "owner": "alice", "state": "up", "network": "g-3",
    "expires": "2026-01-01T00:00:00Z", "created": "2025-12-31T22:00:00Z", "error": None,
    "stages": [["web"], ["client"]], "zz": 1,
    "members": [
        {"role": "client", "index": 1, "instance_id": "c1", "name": "web-client-1",
         "hostname": "vnode02", "state": "running", "address": "10.250.3.3", "ssh_command": None},
        {"role": "web", "index": 1, "instance_id": "w1", "name": "web-web-1",
         "hostname": "vnode01", "state": "running", "address": "10.250.3.2", "ssh_command": None},
    ],
}


def test_grid_up_sends_the_file_text_or_a_files_content(tmp_path):
    from vfarm_client import Client, Grid

    srv = _Recorder(201, GRID_JSON)
    try:
        c = Client(srv.url, token="vft_x")
        text = '[grid]\nname = "web"\n'
        g = c.grid_up(text, name="web2", expiry="3h")
        assert isinstance(g, Grid) and (g.name, g.state, g.network, g.extra) == (
            "web", "up", "g-3", {"zz": 1})
        assert [m.name for m in g.role("web")] == ["web-web-1"]
        assert g.members[0].address == "10.250.3.3" and g.members[0].ssh_command is None
        f = tmp_path / "web.toml"
        f.write_text(text)
        c.grid_up(f)  # a Path
        c.grid_up(str(f), keep_on_failure=True)  # a one-line string naming a file
        assert srv.seen == [
            ("POST", "/api/v1/grids", {"file": text, "name": "web2", "expiry": "3h"}),
            ("POST", "/api/v1/grids", {"file": text}),
            ("POST", "/api/v1/grids", {"file": text, "keep_on_failure": True}),
        ]
    finally:
        srv.close()


def test_grid_up_of_a_missing_file_names_the_field_and_sends_nothing(tmp_path):
    from vfarm_client import Client

    srv = _Recorder(201, GRID_JSON)
    try:
        with pytest.raises(VfarmError) as e:
            Client(srv.url).grid_up(str(tmp_path / "absent.toml"))
        assert (e.value.status, e.value.code, e.value.field) == (0, "invalid_argument", "file")
        assert srv.seen == []
    finally:
        srv.close()


def test_grid_calls_and_a_refusal_carrying_code_and_field():
    from vfarm_client import Client

    srv = _Recorder(200, GRID_JSON)
    try:
        c = Client(srv.url)
        assert c.grid("web").members[1].role == "web"
        assert c.grid_extend("web", "1d").name == "web"
        assert c.grid_down("web") == "web"
        assert [m for m, _, _ in srv.seen] == ["GET", "POST", "DELETE"]
        assert srv.seen[1] == ("POST", "/api/v1/grids/web/extend", {"by": "1d"})
        assert srv.seen[2][1] == "/api/v1/grids/web"
    finally:
        srv.close()
    bad = {"error": {"code": "invalid_spec", "message": "count must be 1 to 64",
                     "field": "roles.wn.count"}}
    srv = _Recorder(400, bad)
    try:
        with pytest.raises(VfarmError) as e:
            Client(srv.url).grid_up('[roles.wn]\ncount = 0\n')
        got = (e.value.status, e.value.code, e.value.field)
        assert got == (400, "invalid_spec", "roles.wn.count")
    finally:
        srv.close()
    srv = _Recorder(200, [GRID_JSON])
    try:
        assert [g.name for g in Client(srv.url).grids()] == ["web"]
    finally:
        srv.close()
