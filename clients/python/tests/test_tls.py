"""Acceptance 1 through the Python client: `vfarm serve` over HTTPS with a host certificate
and two user certificates from a test CA made by `vfarm ca`, an admin certificate and a
token user. Each user sees only their own instances, the admin sees all, no identity → 401.
"""

from __future__ import annotations

import uuid

import pytest
from conftest import ADMIN_DN, ALICE_DN, BOB_DN, CA_DN, issued

from vfarm_client import Client, VfarmError


def make(c: Client, who: str):
    return c.create_instance(
        "minbase", name=f"{who}-{uuid.uuid4().hex[:8]}", command=["sleep", "infinity"]
    )


def test_client_certificates_are_the_identity(tls):
    who = tls.client("alice").whoami()
    assert (who.user, who.method, who.admin) == (issued(ALICE_DN), "client-cert", False)
    assert (who.subject, who.issuer) == (ALICE_DN, CA_DN)
    assert tls.client("bob").whoami().user == issued(BOB_DN)
    admin = tls.client("admin").whoami()
    assert (admin.user, admin.admin) == (issued(ADMIN_DN), True)
    carol = Client(tls.url, token=tls.carol, ca=tls.ca).whoami()
    assert (carol.user, carol.method) == ("carol", "token")


def test_no_certificate_and_no_token_is_401(tls):
    with pytest.raises(VfarmError) as e:
        tls.client(None).instances()
    assert (e.value.status, e.value.code) == (401, "unauthenticated")


def test_server_is_verified_against_the_ca(tls):
    # The test CA is not in the system's trust store: the handshake must fail.
    c = Client(
        tls.url,
        cert=str(tls.root / "alice" / "usercert.pem"),
        key=str(tls.root / "alice" / "userkey.pem"),
    )
    with pytest.raises(VfarmError) as e:
        c.whoami()
    assert (e.value.status, e.value.code) == (0, "tls_error"), repr(e.value)


def test_each_certificate_user_sees_only_their_own(tls):
    alice, bob, admin = tls.client("alice"), tls.client("bob"), tls.client("admin")
    carol = Client(tls.url, token=tls.carol, ca=tls.ca)
    a, b, c = make(alice, "alice"), make(bob, "bob"), make(carol, "carol")
    try:
        assert (a.owner, b.owner, c.owner) == (issued(ALICE_DN), issued(BOB_DN), "carol")
        assert a.state == b.state == c.state == "running"
        seen = {
            "alice": {i.id for i in alice.instances()},
            "bob": {i.id for i in bob.instances()},
            "carol": {i.id for i in carol.instances()},
        }
        assert seen["alice"] >= {a.id} and not seen["alice"] & {b.id, c.id}
        assert seen["bob"] >= {b.id} and not seen["bob"] & {a.id, c.id}
        assert seen["carol"] >= {c.id} and not seen["carol"] & {a.id, b.id}
        for client, other in ((alice, b.id), (bob, a.id), (carol, a.id), (alice, c.id)):
            with pytest.raises(VfarmError) as e:
                client.instance(other)
            assert (e.value.status, e.value.code) == (404, "instance_not_found")
        # Work through the certificate identity, too.
        assert alice.exec(a.id, "id -u").stdout == "0\n"
        everyone = {i.id: i.owner for i in admin.instances()}
        assert everyone.get(a.id) == issued(ALICE_DN)
        assert everyone.get(b.id) == issued(BOB_DN)
        assert everyone.get(c.id) == "carol"
    finally:
        alice.destroy(a.id)
        bob.destroy(b.id)
        admin.destroy(c.id)  # the admin may destroy anyone's
    assert c.id not in {i.id for i in carol.instances()}
