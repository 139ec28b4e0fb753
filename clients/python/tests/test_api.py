"""The Python client against a real `vfarm serve` over plain HTTP on loopback, with tokens.

Covers: identity and 401s, images, an OCI instance's whole life (create → exec → snapshot
→ revert → stop/start/pause/resume/extend → destroy), owners (each token user sees only
their own instances, others are 404, the admin sees all), bad input (400 naming the field,
nothing changed), quota, audit and the event stream; tokens (each user their own) and
image-list subscriptions (admins only).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
import uuid
from pathlib import Path

import pytest

from vfarm_client import Client, Instance, Pending, VfarmError


REPO = Path(__file__).resolve().parents[3]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create(c: Client, name: str, **kw) -> Instance:
    inst = c.create_instance("minbase", name=name, command=["sleep", "infinity"], expiry="1h", **kw)
    assert isinstance(inst, Instance)
    return inst


@contextlib.contextmanager
def hang_up_after(stream, seconds: float):
    """Bound a wait on an event stream: the keep-alives would otherwise keep a loop that
    waits for an event which never comes alive forever. Closing ends the iteration."""
    t = threading.Timer(seconds, stream.close)
    t.daemon = True
    t.start()
    try:
        yield
    finally:
        t.cancel()


# --- identity ---------------------------------------------------------------------------


def test_whoami_token(plain):
    who = plain.client("alice").whoami()
    assert (who.user, who.method, who.admin) == ("alice", "token", False)
    assert plain.client("boss").whoami().admin is True


def test_no_token_is_401(plain):
    with pytest.raises(VfarmError) as e:
        plain.client(None).instances()
    assert e.value.status == 401
    assert e.value.code == "unauthenticated"


def test_bad_token_is_401(plain):
    c = Client(plain.url, token="vft_0123456789ab_" + "0" * 64)
    with pytest.raises(VfarmError) as e:
        c.whoami()
    assert (e.value.status, e.value.code) == (401, "invalid_token")


def test_environment_configures_the_client(plain, monkeypatch):
    monkeypatch.setenv("VFARM_SERVER", plain.url)
    monkeypatch.setenv("VFARM_TOKEN", plain.tokens["bob"])
    assert Client().whoami().user == "bob"


def test_bad_client_arguments_name_the_field(monkeypatch):
    monkeypatch.delenv("VFARM_SERVER", raising=False)
    for kwargs, fld in (
        ({}, "base_url"),
        ({"base_url": "ftp://example.org"}, "base_url"),
        ({"base_url": "http://127.0.0.1:1", "cert": "/nonexistent.pem"}, "cert"),
        ({"base_url": "http://127.0.0.1:1", "key": "/k.pem"}, "cert"),
        ({"base_url": "https://127.0.0.1:1", "ca": "/nonexistent-ca.pem"}, "ca"),
    ):
        with pytest.raises(VfarmError) as e:
            Client(**kwargs)
        assert (e.value.status, e.value.code, e.value.field) == (0, "invalid_argument", fld), kwargs


def test_connection_refused_is_a_vfarm_error():
    with pytest.raises(VfarmError) as e:
        Client("http://127.0.0.1:9", token="x", timeout=10).whoami()
    assert (e.value.status, e.value.code) == (0, "connection_failed")


# --- images and the OpenAPI document ----------------------------------------------------


def test_images(plain):
    c = plain.client("alice")
    names = [i.name for i in c.images()]
    assert "minbase" in names
    # Paged and filtered on the server: the first page, and nobody's images but the public.
    assert [i.id for i in c.images(limit=1)] == [i.id for i in c.images()][:1]
    assert c.images(owner="nobody-at-all") == []
    with pytest.raises(VfarmError) as e:
        c.images(limit=0)
    assert (e.value.status, e.value.field) == (400, "limit"), repr(e.value)
    img = c.image("minbase")
    assert img.name == "minbase"
    tar = [a for a in img.artifacts if a.format == "tar"]
    assert tar and tar[0].size and len(tar[0].sha512 or "") == 128
    assert c.image(img.id[:12]).id == img.id
    with pytest.raises(VfarmError) as e:
        c.image("no-such-image")
    assert (e.value.status, e.value.code) == (404, "image_not_found")


def test_image_download_matches_its_sha512(plain, tmp_path):
    c = plain.client("alice")
    tar = next(a for a in c.image("minbase").artifacts if a.format == "tar")
    dest = tmp_path / "minbase.tar"
    assert c.download_image("minbase", str(dest), format="tar") == str(dest)
    h = hashlib.sha512()
    with open(dest, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    assert (dest.stat().st_size, h.hexdigest()) == (tar.size, tar.sha512)
    dest.unlink()  # pytest keeps the last runs' temp dirs: do not keep 170 MB in each
    with pytest.raises(VfarmError) as e:
        c.download_image("minbase", str(tmp_path / "x"), format="floppy")
    assert e.value.status == 400 and e.value.field == "format", repr(e.value)
    assert not (tmp_path / "x").exists(), "a failed download left a file"
    with pytest.raises(VfarmError) as e:
        c.remove_image("no-such-image")
    assert (e.value.status, e.value.code) == (404, "image_not_found")


def test_image_build_bad_spec_is_400_naming_the_field(plain):
    c = plain.client("alice")
    before = len(c.images())
    with pytest.raises(VfarmError) as e:
        c.build_image(suite="no-such-suite")
    assert (e.value.status, e.value.code, e.value.field) == (400, "invalid_spec", "suite")
    with pytest.raises(VfarmError) as e:
        c.build_image(suite="bookworm", packages=["not a package!"])
    assert e.value.status == 400 and e.value.field == "package"
    assert len(c.images()) == before


def test_operation_not_found(plain):
    with pytest.raises(VfarmError) as e:
        plain.client("alice").operation("00000000-0000-0000-0000-000000000000")
    assert (e.value.status, e.value.code) == (404, "operation_not_found")


def test_openapi_document(plain):
    doc = plain.client("alice").openapi()
    assert str(doc.get("openapi", "")).startswith("3.")
    paths = doc["paths"]
    for p in ("/api/v1/instances", "/api/v1/images", "/api/v1/whoami"):
        assert p in paths, sorted(paths)


# --- instances ----------------------------------------------------------------------------


def test_instance_lifecycle(plain):
    c = plain.client("alice")
    name = unique("life")
    inst = create(c, name)
    try:
        assert inst.state == "running", inst
        assert inst.name == name and inst.owner == "alice" and inst.driver == "oci"
        assert inst.image_name == "minbase"
        assert inst.expires, "an instance created with expiry=1h has an expiry"

        r = c.exec(name, "echo out; echo err >&2; exit 3")
        assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")
        r = c.exec(inst.id, ["sh", "-c", 'printf %s "$GREETING"'], env=["GREETING=hello"])
        assert (r.exit_code, r.stdout) == (0, "hello")
        assert c.exec(inst.id, ["cat", "/etc/debian_version"]).stdout.startswith("12")

        # Snapshot, change, revert: the change is gone.
        snap = c.create_snapshot(name, "clean")
        assert snap.name == "clean"
        assert c.exec(name, "echo x > /root/marker").exit_code == 0
        assert [s.name for s in c.snapshots(name)] == ["clean"]
        shown = c.instance(name)
        assert shown.id == inst.id
        assert [s.name for s in shown.snapshots or []] == ["clean"]
        reverted = c.revert_snapshot(name, "clean")
        assert reverted.id == inst.id
        assert c.exec(name, "test -e /root/marker").exit_code == 1
        with pytest.raises(VfarmError) as e:
            c.revert_snapshot(name, "no-such-snapshot")
        assert (e.value.status, e.value.code) == (404, "snapshot_not_found")
        assert c.remove_snapshot(name, "clean") == "clean"
        assert c.snapshots(name) == []

        # Pause/resume, stop/start, extend.
        assert c.pause(name).state == "paused"
        assert c.resume(name).state == "running"
        assert c.stop(name, force=True).state == "stopped"
        assert c.start(name).state == "running"
        later = c.extend(name, "2h")
        assert later.expires and later.expires > (inst.expires or "")
        assert isinstance(c.console(name), str)
    finally:
        destroyed = c.destroy(inst.id)
    assert destroyed == inst.id
    with pytest.raises(VfarmError) as e:
        c.instance(inst.id)
    assert (e.value.status, e.value.code) == (404, "instance_not_found")
    assert inst.id not in [i.id for i in c.instances()]


def test_create_without_wait_returns_the_operation(plain):
    c = plain.client("alice")
    p = c.create_instance(
        "minbase", name=unique("nowait"), command=["sleep", "infinity"], wait=False
    )
    assert isinstance(p, Pending)
    try:
        assert p.instance.id
        if p.operation is not None:
            op = c.wait_operation(p.operation, timeout=300)
            assert op.status == "succeeded"
        # Whether through the operation or by the time it answers, it ends up running.
        deadline = time.monotonic() + 300
        while c.instance(p.instance.id).state != "running":
            assert time.monotonic() < deadline, c.instance(p.instance.id)
            time.sleep(0.2)
    finally:
        c.destroy(p.instance.id)


def test_owners_see_only_their_own_instances(plain):
    alice, bob, boss = plain.client("alice"), plain.client("bob"), plain.client("boss")
    a = create(alice, unique("alice"))
    b = create(bob, unique("bob"))
    try:
        assert a.owner == "alice" and b.owner == "bob"
        a_ids = {i.id for i in alice.instances()}
        b_ids = {i.id for i in bob.instances()}
        assert a.id in a_ids and b.id not in a_ids
        assert b.id in b_ids and a.id not in b_ids
        assert {i.owner for i in alice.instances()} == {"alice"}
        # Another owner's instance does not exist for bob, whatever he tries.
        for attempt in (
            lambda: bob.instance(a.id),
            lambda: bob.instance(a.name or ""),
            lambda: bob.exec(a.id, "true"),
            lambda: bob.stop(a.id),
            lambda: bob.create_snapshot(a.id, "s"),
            lambda: bob.destroy(a.id),
        ):
            with pytest.raises(VfarmError) as e:
                attempt()
            assert (e.value.status, e.value.code) == (404, "instance_not_found")
        assert alice.instance(a.id).state == "running"
        # The admin sees and touches everything.
        all_ids = {i.id: i.owner for i in boss.instances()}
        assert all_ids.get(a.id) == "alice" and all_ids.get(b.id) == "bob"
        assert boss.instance(a.id).owner == "alice"
        assert boss.exec(b.id, "echo admin").stdout == "admin\n"
    finally:
        alice.destroy(a.id)
        boss.destroy(b.id)
    assert b.id not in {i.id for i in bob.instances()}


def test_instances_filter_and_page_on_the_server(plain):
    bob, alice, boss = plain.client("bob"), plain.client("alice"), plain.client("boss")
    made = [
        bob.create_instance("minbase", name=unique("page"), reserve=True, command=["true"])
        for _ in range(5)
    ]
    ids = [i.id for i in made]
    try:
        mine = [i.id for i in bob.instances(owner="bob")]
        assert [i for i in mine if i in ids] == ids  # oldest first
        # One page of two, and every page by the Link header: the same list, no repeats.
        assert [i.id for i in bob.instances(limit=2)] == mine[:2]
        assert [i.id for i in bob.iter_instances(page_size=2)] == mine
        assert [i.id for i in boss.iter_instances(owner="bob", state="created", page_size=3)][
            -5:
        ] == ids
        assert {i.id for i in bob.instances(state="created")} >= set(ids)
        assert [i.id for i in bob.instances(state="running") if i.id in ids] == []
        assert {i.id for i in bob.instances(image="minbase")} >= set(ids)
        # Another owner's instances stay invisible, whatever the filter.
        assert alice.instances(owner="bob") == []
        assert list(alice.iter_instances(owner="bob", page_size=1)) == []
        for kwargs, field in (({"limit": 0}, "limit"), ({"limit": 1001}, "limit"),
                              ({"state": "sleeping"}, "state")):
            with pytest.raises(VfarmError) as e:
                bob.instances(**kwargs)
            assert (e.value.status, e.value.field) == (400, field), repr(e.value)
    finally:
        for i in ids:
            bob.destroy(i)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"cpus": -1}, "cpus"),
        ({"memory": "lots"}, "memory"),
        ({"disk": "-5G"}, "disk"),
        ({"expiry": "soon"}, "expiry"),
        ({"name": "Not A Name!"}, "name"),
        ({"driver": "xen"}, "driver"),
        ({"env": ["NOEQUALS"]}, "env"),
        ({"network": "lab"}, "network"),
        ({"bogus_field": 1}, None),
    ],
)
def test_bad_create_is_400_naming_the_field(plain, kwargs, field):
    c = plain.client("alice")
    before = {i.id for i in c.instances()}
    with pytest.raises(VfarmError) as e:
        c.create_instance("minbase", command=["true"], **kwargs)
    assert e.value.status == 400, repr(e.value)
    assert e.value.code in ("invalid_request", "invalid_spec", "invalid_duration"), repr(e.value)
    if field:
        assert e.value.field == field, repr(e.value)
    else:
        assert e.value.field and "bogus_field" in e.value.message, repr(e.value)
    assert {i.id for i in c.instances()} == before, "a refused create changed something"


def test_a_site_without_networks_lists_none(plain):
    c = plain.client("alice")
    assert c.networks() == []
    with pytest.raises(VfarmError) as e:
        c.network("lab")
    assert (e.value.status, e.value.code) == (404, "not_found"), repr(e.value)


def test_create_of_unknown_image(plain):
    c = plain.client("alice")
    with pytest.raises(VfarmError) as e:
        c.create_instance("no-such-image", command=["true"])
    assert e.value.status in (400, 404), repr(e.value)
    assert e.value.code == "image_not_found", repr(e.value)


def test_bad_extend_names_the_field(plain):
    c = plain.client("alice")
    inst = create(c, unique("ext"))
    try:
        with pytest.raises(VfarmError) as e:
            c.extend(inst.id, "a while")
        assert (e.value.status, e.value.field) == (400, "by"), repr(e.value)
        assert c.instance(inst.id).expires == inst.expires
    finally:
        c.destroy(inst.id)


def test_reserve_holds_without_starting(plain):
    c = plain.client("alice")
    inst = c.create_instance(
        "minbase", name=unique("res"), reserve=True, command=["sleep", "infinity"]
    )
    try:
        assert inst.state == "created", inst
        assert c.start(inst.id).state == "running"
    finally:
        c.destroy(inst.id)


def test_quota_exceeded_is_409_and_changes_nothing(plain):
    c = plain.client("dora")
    with pytest.raises(VfarmError) as e:
        c.create_instance("minbase", cpus=2, command=["true"])
    assert (e.value.status, e.value.code, e.value.field) == (409, "quota_exceeded", "cpus")
    first = create(c, unique("dora"))
    try:
        with pytest.raises(VfarmError) as e:
            create(c, unique("dora"))
        assert (e.value.status, e.value.code) == (409, "quota_exceeded"), repr(e.value)
        assert e.value.field == "instances", repr(e.value)
        assert [i.id for i in c.instances()] == [first.id]
        q = c.quota()
        assert q.limits.get("instances") == 1 and q.usage.get("instances") == 1, q
    finally:
        c.destroy(first.id)
    assert c.quota().usage.get("instances") == 0


# --- quota, audit, events -------------------------------------------------------------------


def test_quota_and_audit(plain):
    c = plain.client("bob")
    q = c.quota()
    assert q.owner == "bob"
    assert isinstance(q.limits, dict) and isinstance(q.usage, dict)
    inst = create(c, unique("audited"))
    c.destroy(inst.id)
    entries = c.audit(limit=1000)
    assert entries and {e.actor for e in entries} == {"bob"}
    mine = [e for e in entries if inst.id in str(e.object) or inst.id in str(e.detail)]
    assert mine, entries[-5:]
    # The admin reads everyone's entries.
    actors = {e.actor for e in plain.client("boss").audit(limit=1000)}
    assert "bob" in actors
    # Filters on the server: an actor, an action prefix; another's actor selects nothing.
    prefix = "DELETE /api/v1/instances/"
    destroys = plain.client("boss").audit(limit=1000, actor="bob", action=prefix)
    assert any(inst.id in str(e.action) for e in destroys), destroys[-5:]
    assert all(e.actor == "bob" and str(e.action).startswith(prefix) for e in destroys)
    assert c.audit(actor="alice") == []


def test_events_stream_the_state_changes_of_a_create(plain):
    alice, bob = plain.client("alice"), plain.client("bob")
    with alice.events() as a_stream, bob.events() as b_stream:
        a = alice.create_instance(
            "minbase", name=unique("ev"), command=["sleep", "infinity"], wait=False
        )
        assert isinstance(a, Pending)
        a_id = a.instance.id
        try:
            states = []
            seen = None
            with hang_up_after(a_stream, 300):
                for ev in a_stream:
                    inst = ev.instance
                    if inst is not None and inst.id == a_id:
                        states.append(inst.state)
                        seen = inst
                        if inst.state in ("running", "failed"):
                            break
            assert states and states[-1] == "running", states
            assert seen is not None and seen.owner == "alice"

            # Bob's stream carries his own instance, never alice's: hers changed state
            # before his was even created, so a leak would come first.
            b = create(bob, unique("ev-bob"))
            bob_running = False
            try:
                with hang_up_after(b_stream, 300):
                    for ev in b_stream:
                        assert a_id not in str(ev.data), f"bob saw alice's event {ev}"
                        got = ev.instance
                        if got is not None and got.id == b.id and got.state == "running":
                            bob_running = True
                            break
                assert bob_running, "bob's stream never said his instance runs"
            finally:
                bob.destroy(b.id)
        finally:
            alice.destroy(a_id)
        # The removal is an event too.
        removed = False
        with hang_up_after(a_stream, 120):
            for ev in a_stream:
                if ev.event == "instance-removed" and a_id in str(ev.data):
                    removed = True
                    break
        assert removed, "no instance-removed event after destroy"


def test_host_inventory_is_for_admins(plain):
    boss, alice = plain.client("boss"), plain.client("alice")
    with pytest.raises(VfarmError) as e:
        alice.hosts()
    assert e.value.status == 403, repr(e.value)
    name = unique("node")
    tok = boss.add_host(name, expires="30m")
    try:
        assert tok.name == name and len(tok.token) > 20, tok
        listed = {h.name: h for h in boss.hosts()}
        assert listed[name].state == "pending" and listed[name].instances == 0, listed[name]
        assert boss.drain(name).drained is True
        assert boss.undrain(name).drained is False
        assert boss.host(name).token_expires == tok.expires
    finally:
        assert boss.remove_host(name).name == name
    with pytest.raises(VfarmError) as e:
        boss.host(name)
    assert e.value.status == 404, repr(e.value)
    with pytest.raises(VfarmError) as e:
        boss.add_host("Not A Name!")
    assert (e.value.status, e.value.field) == (400, "name"), repr(e.value)


def test_migrate_without_nodes_names_the_field(plain):
    c = plain.client("alice")
    inst = create(c, unique("mig"))
    try:
        with pytest.raises(VfarmError) as e:
            c.migrate(inst.id, to="node9")
        assert (e.value.status, e.value.field) == (400, "to"), repr(e.value)
        assert "no nodes" in e.value.message, repr(e.value)
        assert c.instance(inst.id).state == "running"
    finally:
        c.destroy(inst.id)


# --- jobs -------------------------------------------------------------------------------

JSDL = """<?xml version="1.0" encoding="UTF-8"?>
<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
    xmlns:jsdl-posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix">
  <jsdl:JobDescription>
    <jsdl:Application>
      <jsdl-posix:POSIXApplication>
        <jsdl-posix:Executable>/bin/echo</jsdl-posix:Executable>
        <jsdl-posix:Argument>hello from jsdl</jsdl-posix:Argument>
        <jsdl-posix:CPUTimeLimit>60</jsdl-posix:CPUTimeLimit>
      </jsdl-posix:POSIXApplication>
    </jsdl:Application>
    <jsdl:Resources>
      <jsdl:OperatingSystem>
        <jsdl:OperatingSystemType>
          <jsdl:OperatingSystemName>LINUX</jsdl:OperatingSystemName>
        </jsdl:OperatingSystemType>
      </jsdl:OperatingSystem>
    </jsdl:Resources>
  </jsdl:JobDescription>
</jsdl:JobDefinition>
"""


def test_jobs_json_and_jsdl_run_as_their_submitter(plain):
    alice, bob, boss = plain.client("alice"), plain.client("bob"), plain.client("boss")
    made = alice.submit_job(
        ["sh", "-c", "echo kept > r.txt"], image="minbase", stage_out=["r.txt:r.txt"]
    )
    assert made.owner == "alice" and made.warnings == []
    doc = alice.submit_job(jsdl=JSDL)
    # The document's CPU time limit is parsed but not applied: said, not dropped.
    assert any("CPUTimeLimit" in w for w in doc.warnings), doc.warnings
    done = alice.wait_job(made.id, timeout=120)
    assert done.state == "succeeded", done
    assert [o["name"] for o in done.outputs] == ["r.txt"]
    assert alice.job_output(made.id, "r.txt") == b"kept\n"
    assert alice.wait_job(doc.id, timeout=120).state == "succeeded"
    # bob sees none of it, the admin all of it.
    assert bob.jobs() == []
    for attempt in (lambda: bob.job(made.id), lambda: bob.job_output(made.id, "r.txt")):
        with pytest.raises(VfarmError) as e:
            attempt()
        assert (e.value.status, e.value.code) == (404, "job_not_found")
    assert {made.id, doc.id} <= {j.id for j in boss.jobs()}
    assert {j.id for j in alice.jobs(state="succeeded")} >= {made.id, doc.id}


def test_job_refusals_name_the_field_and_store_nothing(plain):
    alice = plain.client("alice")
    before = len(alice.jobs())
    for fields, field in (
        ({"stage_in": ["/etc/passwd:p"]}, "stage_in"),
        ({"memory": "lots"}, "memory"),
        ({"queue": "nosuch"}, "queue"),
    ):
        with pytest.raises(VfarmError) as e:
            alice.submit_job(["true"], image="minbase", **fields)
        assert (e.value.status, e.value.field) == (400, field), (fields, e.value)
    with pytest.raises(VfarmError) as e:
        alice.submit_job(jsdl="<nope/>")
    assert e.value.code == "invalid_jsdl"
    assert len(alice.jobs()) == before


def test_cancel_a_running_job(plain):
    alice = plain.client("alice")
    j = alice.submit_job(["sleep", "600"], image="minbase")
    deadline = time.monotonic() + 60
    while alice.job(j.id).state != "running":
        assert time.monotonic() < deadline, alice.job(j.id)
        time.sleep(0.2)
    alice.cancel_job(j.id)
    assert alice.wait_job(j.id, timeout=120).state == "cancelled"


# --- tokens and image-list subscriptions -------------------------------------------------


def test_tokens_are_their_owners(plain):
    alice, bob, boss = plain.client("alice"), plain.client("bob"), plain.client("boss")
    made = alice.create_token(name=unique("laptop"), expiry="1d")
    assert made.user == "alice" and made.token and made.token.startswith("vft_")
    assert made.expires is not None
    # The secret works, and is never listed.
    assert Client(plain.url, token=made.token).whoami().user == "alice"
    mine = alice.tokens()
    assert made.id in {t.id for t in mine} and {t.user for t in mine} == {"alice"}
    assert all(t.token is None for t in mine)
    # Not for another user, and bob's is not alice's to revoke (not found, as a missing one).
    with pytest.raises(VfarmError) as e:
        alice.create_token(user="bob")
    assert (e.value.status, e.value.code, e.value.field) == (403, "forbidden", "user")
    bobs = bob.create_token(name=unique("ci"))
    with pytest.raises(VfarmError) as e:
        alice.revoke_token(bobs.id)
    assert (e.value.status, e.value.code) == (404, "token_not_found")
    assert bobs.id not in {t.id for t in alice.tokens(user="bob")}
    # The admin sees both; alice revokes hers and it stops working.
    assert {made.id, bobs.id} <= {t.id for t in boss.tokens()}
    assert alice.revoke_token(made.id).revoked is not None
    with pytest.raises(VfarmError) as e:
        Client(plain.url, token=made.token).whoami()
    assert e.value.status == 401
    assert boss.revoke_token(bobs.id).revoked is not None


def test_subscriptions_are_for_admins(plain):
    fixtures = REPO / "tests" / "data" / "imagelists" / "cloudkeeper"
    url = (fixtures / "imagelist01.signed").resolve().as_uri()
    ca_dir = str((fixtures / "ca").resolve())
    alice, boss = plain.client("alice"), plain.client("boss")
    with pytest.raises(VfarmError) as e:
        alice.add_subscription(url, ca_dir, update=False)
    assert (e.value.status, e.value.code) == (403, "forbidden")
    with pytest.raises(VfarmError) as e:
        alice.subscriptions()
    assert e.value.status == 403
    # A CA dir that is no path on the service's machine names the field.
    with pytest.raises(VfarmError) as e:
        boss.add_subscription(url, "ca", update=False)
    assert (e.value.status, e.value.field) == (400, "ca_dir")

    sub, report = boss.add_subscription(url, ca_dir, update=False)
    assert report is None and sub.url == url and sub.ca_dir == ca_dir
    assert sub.id in {s.id for s in boss.subscriptions()}
    assert boss.subscription(sub.id)["subscription"]["id"] == sub.id
    # The fixture list has long expired: the update is a refusal report, not an error.
    (r,) = boss.update_subscriptions(sub.id)
    assert (r.subscription, r.result) == (sub.id, "refused"), r
    assert r.refused and r.refused["code"], r
    done = boss.revoke_subscription(sub.id, reason="test")
    assert (done["kind"], done["target"]) == ("subscription", sub.id)
    assert next(s for s in boss.subscriptions() if s.id == sub.id).revoked is not None
    assert boss.remove_subscription(sub.id) == sub.id
    assert sub.id not in {s.id for s in boss.subscriptions()}


# --- virtual grids -------------------------------------------------------------------------

# Two roles on the grid's own network: the client learns the server's address through a
# reference, and stops promptly on SIGTERM (as PID 1 a shell ignores it otherwise).
GRID_FILE = """\
[grid]
name = "from-the-file"
expiry = "2h"

[roles.srv]
image = "minbase"
cpus = 0.25
memory = "64M"
command = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]

[roles.cli]
image = "minbase"
after = ["srv"]
cpus = 0.25
memory = "64M"
env = { SRV = "{{ roles.srv.address }}" }
command = ["sh", "-c", "trap 'exit 0' TERM; echo $SRV > /tmp/srv; while :; do sleep 1; done"]
"""


def test_grid_refusal_names_the_field_and_makes_nothing(plain):
    alice = plain.client("alice")
    before = len(alice.instances())
    bad = GRID_FILE.replace('after = ["srv"]', 'after = ["nosuch"]')
    with pytest.raises(VfarmError) as e:
        alice.grid_up(bad, name=unique("pyg"))
    assert (e.value.status, e.value.field) == (400, "roles.cli.after"), e.value
    assert "nosuch" in e.value.message
    assert alice.grids() == [] and len(alice.instances()) == before


def test_grid_up_show_extend_down(plain, tmp_path):
    alice, bob, boss = plain.client("alice"), plain.client("bob"), plain.client("boss")
    name = unique("pyg")
    f = tmp_path / "two.toml"
    f.write_text(GRID_FILE)
    g = alice.grid_up(f, name=name, expiry="1h")
    try:
        assert (g.name, g.owner, g.state) == (name, "alice", "up"), g
        assert g.stages == [["srv"], ["cli"]]
        assert g.network and g.network.startswith("g-"), g.network
        assert sorted((m.role, m.index, m.state) for m in g.members) == [
            ("cli", 1, "running"), ("srv", 1, "running")]
        srv, cli = g.role("srv")[0], g.role("cli")[0]
        assert srv.address and cli.address and srv.address != cli.address
        # The reference reached the member: the client knows the server's address.
        out = alice.exec(cli.instance_id, "cat /tmp/srv")
        assert (out.exit_code, out.stdout.strip()) == (0, srv.address)
        # Members are the owner's instances; the grid is hers alone (the admin sees all).
        mine = {i.id: i for i in alice.instances()}
        assert {srv.instance_id, cli.instance_id} <= set(mine)
        assert [x.name for x in alice.grids()] == [name]
        assert alice.grid(name).members == g.members
        assert bob.grids() == []
        with pytest.raises(VfarmError) as e:
            bob.grid(name)
        assert e.value.status == 404
        with pytest.raises(VfarmError) as e:
            bob.grid_down(name)
        assert e.value.status == 404
        assert name in {x.name for x in boss.grids()}
        later = alice.grid_extend(name, "1d")
        assert later.expires and g.expires and later.expires > g.expires
        with pytest.raises(VfarmError) as e:
            alice.grid_up(GRID_FILE, name=name)
        assert (e.value.status, e.value.field) == (409, "name"), e.value
    finally:
        assert alice.grid_down(name) == name
    with pytest.raises(VfarmError) as e:
        alice.grid(name)
    assert e.value.status == 404
    left = {i.id for i in alice.instances()}
    assert not {m.instance_id for m in g.members} & left
