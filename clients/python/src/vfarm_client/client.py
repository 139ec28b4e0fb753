"""The vfarm REST client: one `Client` per server, standard library only."""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import shutil
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import (
    Any,
    Dict,
    Iterator,
    List,
    Literal,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
    overload,
)

from .errors import VfarmError
from .models import (
    AuditEntry,
    Event,
    ExecResult,
    Grid,
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

__all__ = ["Client", "EventStream", "Pending"]

API = "/api/v1"
# A waiting create or a long poll may legitimately take minutes (a VM boots under TCG).
LONG_TIMEOUT = 900.0
# The server comments the event stream every 15 s; four missed beats means it is gone.
EVENTS_TIMEOUT = 60.0
FOREVER = 10.0**7  # a socket timeout that never fires (None would mean the global default)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _next_link(values: Sequence[str]) -> Optional[str]:
    """The target of an RFC 8288 `rel="next"` link among `Link` header values."""
    for value in values:
        for link in value.split(","):
            target, _, params = link.strip().partition(";")
            target = target.strip()
            if not (target.startswith("<") and target.endswith(">")):
                continue
            rels = [p.strip().replace(" ", "") for p in params.split(";")]
            if 'rel="next"' in rels or "rel=next" in rels:
                return target[1:-1]
    return None


class Pending:
    """What `create_instance(..., wait=False)` returns: the instance as just recorded
    (state `creating`) and the operation that starts it."""

    __slots__ = ("instance", "operation")

    def __init__(self, instance: Instance, operation: Optional[Operation]):
        self.instance = instance
        self.operation = operation

    def __repr__(self) -> str:
        return f"Pending(instance={self.instance!r}, operation={self.operation!r})"


class EventStream:
    """An open `GET /api/v1/events` stream: iterate for `Event`s, `close()` (or use `with`)
    to hang up. The connection is open once this object exists, so nothing that happens
    after `Client.events()` returns is missed."""

    def __init__(self, response: Any):
        self._resp = response
        self._closed = False

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        if self._closed:
            raise StopIteration
        event = ""
        data: List[str] = []
        ev_id: Optional[str] = None
        while True:
            try:
                raw = self._resp.readline()
            except (socket.timeout, TimeoutError) as e:
                raise VfarmError(
                    0, "timeout", f"no event or keep-alive from the server: {e}"
                ) from None
            except (OSError, ValueError) as e:
                if self._closed:
                    raise StopIteration from None
                raise VfarmError(0, "connection_failed", f"event stream broke: {e}") from None
            if not raw:  # the server ended the stream
                self.close()
                if data:
                    return Event.parse(event, data, ev_id)
                raise StopIteration
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line == "":
                if data or event:
                    return Event.parse(event, data, ev_id)
                continue
            if line.startswith(":"):  # keep-alive comment
                continue
            name, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                ev_id = value
            # `retry` and unknown fields are ignored, as the SSE spec says.

    def close(self) -> None:
        """Hang up. Safe from another thread: a reader blocked in `next()` wakes up and the
        iteration ends."""
        if not self._closed:
            self._closed = True
            # Closing the file alone does not wake a thread blocked in recv(); shutting the
            # socket down does. The socket is only reachable through the buffered reader.
            sock = getattr(getattr(getattr(self._resp, "fp", None), "raw", None), "_sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            try:
                self._resp.close()
            except OSError:
                pass


class Client:
    """A client of one `vfarm serve`.

    `base_url` (default: `$VFARM_SERVER`) is the server, e.g. `http://127.0.0.1:8750` or
    `https://vfarm.example.org:8750`. Identity: a bearer `token` (default: `$VFARM_TOKEN`),
    or a client certificate `cert` + `key` (PEM files; default `$VFARM_CERT`/`$VFARM_KEY`)
    for HTTPS. `ca` (default `$VFARM_CA`) is a PEM file or a directory of CA certificates
    that verifies the server; without it the system's trust store is used.

    Every failure raises `VfarmError(status, code, message, field)`; `status` is 0 when no
    HTTP answer was received (connection refused, TLS failure, timeout, bad arguments).
    """

    def __init__(
        self,
        base_url: Optional[str] = None,
        token: Optional[str] = None,
        cert: Optional[str] = None,
        key: Optional[str] = None,
        ca: Optional[str] = None,
        timeout: float = 60.0,
    ):
        base_url = base_url or os.environ.get("VFARM_SERVER")
        if not base_url:
            raise VfarmError(
                0,
                "invalid_argument",
                "no server: pass base_url or set VFARM_SERVER (e.g. http://127.0.0.1:8750)",
                "base_url",
            )
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise VfarmError(
                0,
                "invalid_argument",
                f"base_url {base_url!r} is not an http:// or https:// URL with a host",
                "base_url",
            )
        path = parsed.path.rstrip("/")
        if path.endswith(API):  # accept the API root as well as the server root
            path = path[: -len(API)]
        self.base_url = urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, "", ""))
        self.token = token if token is not None else os.environ.get("VFARM_TOKEN") or None
        cert = cert if cert is not None else os.environ.get("VFARM_CERT") or None
        key = key if key is not None else os.environ.get("VFARM_KEY") or None
        ca = ca if ca is not None else os.environ.get("VFARM_CA") or None
        if key and not cert:
            raise VfarmError(0, "invalid_argument", "a key needs its certificate", "cert")
        if (cert or ca) and parsed.scheme != "https":
            which = "cert" if cert else "ca"
            raise VfarmError(
                0,
                "invalid_argument",
                f"{which} is only used over TLS; base_url {base_url!r} is plain http",
                which,
            )
        self.timeout = timeout
        handlers: List[urllib.request.BaseHandler] = []
        if _is_loopback(parsed.hostname):
            # Loopback never goes through a proxy, whatever the environment says.
            handlers.append(urllib.request.ProxyHandler({}))
        if parsed.scheme == "https":
            handlers.append(urllib.request.HTTPSHandler(context=self._tls(cert, key, ca)))
        self._opener = urllib.request.build_opener(*handlers)

    @staticmethod
    def _tls(cert: Optional[str], key: Optional[str], ca: Optional[str]) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        try:
            if ca:
                if os.path.isdir(ca):
                    ctx.load_verify_locations(capath=ca)
                else:
                    ctx.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as e:
            raise VfarmError(0, "invalid_argument", f"cannot load CA {ca!r}: {e}", "ca") from None
        if cert:
            try:
                ctx.load_cert_chain(certfile=cert, keyfile=key)
            except (OSError, ssl.SSLError) as e:
                raise VfarmError(
                    0, "invalid_argument", f"cannot load certificate {cert!r}: {e}", "cert"
                ) from None
        return ctx

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    # --- plumbing -------------------------------------------------------------------------

    def _url(self, path: str, query: Optional[Mapping[str, Any]] = None) -> str:
        url = self.base_url + path
        if query:
            q = {k: v for k, v in query.items() if v is not None}
            if q:
                url += "?" + urllib.parse.urlencode(
                    {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in q.items()}
                )
        return url

    def _open(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
        accept: str = "application/json",
        raw: Optional[Tuple[bytes, str]] = None,
    ) -> Any:
        """Send one request; return the open response, or raise VfarmError. `raw` is a body
        that is not JSON, with its content type."""
        data = None
        headers = {"Accept": accept, "User-Agent": "vfarm-client-python/0.1"}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif raw is not None:
            data, headers["Content-Type"] = raw
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(
            self._url(path, query), data=data, headers=headers, method=method
        )
        try:
            return self._opener.open(req, timeout=self.timeout if timeout is None else timeout)
        except urllib.error.HTTPError as e:
            raise self._http_error(e) from None
        except (socket.timeout, TimeoutError) as e:
            raise VfarmError(0, "timeout", f"{method} {path}: no answer in time ({e})") from None
        except urllib.error.URLError as e:
            reason = e.reason
            code = "tls_error" if isinstance(reason, ssl.SSLError) else "connection_failed"
            raise VfarmError(0, code, f"{method} {self.base_url}{path}: {reason}") from None
        except ssl.SSLError as e:
            # TLS 1.3 reports a refused client certificate at the first read, not the handshake.
            raise VfarmError(0, "tls_error", f"{method} {self.base_url}{path}: {e}") from None
        except (ConnectionError, http.client.HTTPException) as e:
            raise VfarmError(
                0, "connection_failed", f"{method} {self.base_url}{path}: {e!r}"
            ) from None

    @staticmethod
    def _http_error(e: urllib.error.HTTPError) -> VfarmError:
        try:
            raw = e.read()
        except OSError:
            raw = b""
        text = raw.decode("utf-8", "replace")
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
            err = doc["error"]
            return VfarmError(
                e.code,
                str(err.get("code") or f"http_{e.code}"),
                str(err.get("message") or e.reason),
                err.get("field"),
            )
        return VfarmError(e.code, f"http_{e.code}", (text.strip() or str(e.reason))[:500])

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
        raw: Optional[Tuple[bytes, str]] = None,
    ) -> Any:
        """One JSON request and its decoded JSON answer (None for an empty body)."""
        with self._open(method, path, body, query, timeout, raw=raw) as resp:
            try:
                raw = resp.read()
            except (socket.timeout, TimeoutError) as e:
                raise VfarmError(0, "timeout", f"{method} {path}: answer cut off ({e})") from None
            except (OSError, http.client.HTTPException) as e:
                raise VfarmError(
                    0, "connection_failed", f"{method} {path}: answer cut off ({e!r})"
                ) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise VfarmError(
                resp.status,
                "invalid_response",
                f"{method} {path}: the answer is not JSON: {raw[:200]!r}",
            ) from None

    def _text(self, path: str, query: Optional[Mapping[str, Any]] = None) -> str:
        with self._open("GET", path, None, query, accept="text/plain") as resp:
            raw: bytes = resp.read()
        return raw.decode("utf-8", "replace")

    @staticmethod
    def _ref(ref: str) -> str:
        if not isinstance(ref, str) or not ref:
            raise VfarmError(
                0, "invalid_argument", f"ref must be a non-empty string, got {ref!r}", "ref"
            )
        return urllib.parse.quote(ref, safe="")

    # --- identity, service ----------------------------------------------------------------

    def whoami(self) -> Whoami:
        """Who the server thinks this client is (`user`, `method`, `admin`)."""
        return Whoami.from_json(self._call("GET", f"{API}/whoami"))

    def openapi(self) -> Dict[str, Any]:
        """The server's OpenAPI document."""
        doc: Dict[str, Any] = self._call("GET", f"{API}/openapi.json")
        return doc

    def quota(self) -> Quota:
        """The caller's quota: `limits` and `usage`."""
        return Quota.from_json(self._call("GET", f"{API}/quota"))

    def audit(
        self,
        limit: Optional[int] = None,
        actor: Optional[str] = None,
        action: Optional[str] = None,
    ) -> List[AuditEntry]:
        """The audit log: the caller's entries (everyone's for admins), the most recent
        `limit` (server default 100), oldest first. The server filters: `actor`, and
        `action` as a prefix (`"instance."`)."""
        query = {"limit": limit, "actor": actor, "action": action}
        doc = self._call("GET", f"{API}/audit", query=query)
        if isinstance(doc, dict):  # tolerate an envelope {"entries": [...]}
            doc = doc.get("entries", doc.get("audit", []))
        return [AuditEntry.from_json(e) for e in doc or []]

    # --- images and operations ------------------------------------------------------------

    def images(self, owner: Optional[str] = None, limit: Optional[int] = None) -> List[Image]:
        """The repository's images, oldest first. The server filters: `owner`, the images
        that user built or imported through the API. With `limit` (1 to 1000), the first
        page of that many."""
        query = {"owner": owner, "limit": limit}
        return [Image.from_json(i) for i in self._call("GET", f"{API}/images", query=query) or []]

    def image(self, ref: str) -> Image:
        """An image by id, unique id prefix or name."""
        return Image.from_json(self._call("GET", f"{API}/images/{self._ref(ref)}"))

    def build_image(self, spec: Optional[Mapping[str, Any]] = None, **fields: Any) -> Operation:
        """Start a build from an image spec (`suite`, `packages`, `groups`, `formats`,
        `name` …, as a dict or keyword arguments). Bad specs fail at once (400); the build
        itself runs behind the returned operation: see `wait_operation`."""
        body = dict(spec or {})
        body.update(fields)
        doc = self._call("POST", f"{API}/images", body)
        return Operation.from_json(doc.get("operation", doc) if isinstance(doc, dict) else doc)

    def remove_image(self, ref: str) -> str:
        """Remove an image; returns its id."""
        doc = self._call("DELETE", f"{API}/images/{self._ref(ref)}")
        return str(doc.get("removed")) if isinstance(doc, dict) else str(doc)

    def download_image(self, ref: str, dest: str, format: str = "tar") -> str:
        """Download an image artifact (`tar`, `raw`, `qcow2` …) to the file `dest`, written
        beside it and renamed, so `dest` is either absent or complete. Returns `dest`."""
        tmp = f"{dest}.part-{os.getpid()}"
        try:
            with (
                self._open(
                    "GET",
                    f"{API}/images/{self._ref(ref)}/download",
                    query={"format": format},
                    timeout=LONG_TIMEOUT,
                    accept="application/octet-stream",
                ) as resp,
                open(tmp, "wb") as out,
            ):
                shutil.copyfileobj(resp, out, 1 << 20)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return dest

    def operation(self, op: Union[str, Operation], wait: Optional[float] = None) -> Operation:
        """An operation's current state; with `wait`, the server holds the answer up to
        that many seconds (at most 300) until the operation ends."""
        op_id = op.id if isinstance(op, Operation) else op
        w = None if wait is None else max(0, min(300, int(wait)))
        doc = self._call(
            "GET",
            f"{API}/operations/{self._ref(op_id)}",
            query={"wait": w},
            timeout=(w or 0) + self.timeout,
        )
        return Operation.from_json(doc)

    def wait_operation(
        self,
        op: Union[str, Operation],
        timeout: Optional[float] = None,
        check: bool = True,
    ) -> Operation:
        """Wait until an operation has ended (long polls, no busy loop) and return it.
        With `check` (default) a failed operation raises VfarmError with the operation's
        error code; after `timeout` seconds VfarmError `timeout` is raised."""
        op_id = op.id if isinstance(op, Operation) else op
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 300.0 if deadline is None else deadline - time.monotonic()
            cur = self.operation(op_id, wait=max(0.0, min(300.0, left)))
            if cur.done:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise VfarmError(0, "timeout", f"operation {op_id} still running after {timeout} s")
        if check and cur.status != "succeeded":
            code = "operation_failed"
            if isinstance(cur.result, dict) and cur.result.get("code"):
                code = str(cur.result["code"])
            raise VfarmError(
                0, code, f"operation {op_id} {cur.status}: {cur.error or ''}".rstrip(": ")
            )
        return cur

    # --- instances ------------------------------------------------------------------------

    def instances(
        self,
        owner: Optional[str] = None,
        state: Optional[str] = None,
        image: Optional[str] = None,
        host: Optional[str] = None,
        limit: Optional[int] = None,
    ) -> List[Instance]:
        """The caller's instances (everyone's for admins), oldest first.

        The server filters: `owner`, `state`, `image` (id or name) and `host` (node)
        combine; a non-admin only ever sees their own. With `limit` (1 to 1000), at most
        that many: the first page (`iter_instances` goes through every page).
        """
        query = {"owner": owner, "state": state, "image": image, "host": host, "limit": limit}
        return [Instance.from_json(i) for i in self._call("GET", f"{API}/instances", query=query) or []]

    def iter_instances(
        self,
        owner: Optional[str] = None,
        state: Optional[str] = None,
        image: Optional[str] = None,
        host: Optional[str] = None,
        page_size: int = 100,
    ) -> Iterator[Instance]:
        """Every instance `instances` would list, fetched `page_size` at a time by following
        the server's `Link: <…>; rel="next"` header (stable while instances come and go)."""
        query = {"owner": owner, "state": state, "image": image, "host": host, "limit": page_size}
        url: Optional[str] = self._url(f"{API}/instances", query)
        while url is not None:
            page, url = self._page(url)
            for i in page:
                yield Instance.from_json(i)

    def _page(self, url: str) -> "tuple[List[Any], Optional[str]]":
        """GET one page of a list: its items and the absolute URL of the next, if any."""
        path = url[len(self.base_url) :] if url.startswith(self.base_url) else url
        with self._open("GET", path) as resp:
            raw = resp.read()
            links = resp.headers.get_all("Link") or []
        nxt = _next_link(links)
        doc = json.loads(raw) if raw else []
        return doc, (self.base_url + nxt if nxt else None)

    def instance(self, ref: str) -> Instance:
        """One instance by id, unique id prefix or name, with snapshots and VM details."""
        return Instance.from_json(self._call("GET", f"{API}/instances/{self._ref(ref)}"))

    @overload
    def create_instance(
        self,
        image: str,
        *,
        name: Optional[str] = ...,
        hostname: Optional[str] = ...,
        network: Optional[str] = ...,
        cpus: Optional[float] = ...,
        memory: Optional[str] = ...,
        disk: Optional[str] = ...,
        expiry: Optional[str] = ...,
        driver: Optional[str] = ...,
        reserve: Optional[bool] = ...,
        ssh_keys: Optional[Sequence[str]] = ...,
        command: Optional[Sequence[str]] = ...,
        env: Optional[Sequence[str]] = ...,
        wait: Literal[True] = ...,
        timeout: Optional[float] = ...,
        **extra: Any,
    ) -> Instance: ...

    @overload
    def create_instance(
        self,
        image: str,
        *,
        name: Optional[str] = ...,
        hostname: Optional[str] = ...,
        network: Optional[str] = ...,
        cpus: Optional[float] = ...,
        memory: Optional[str] = ...,
        disk: Optional[str] = ...,
        expiry: Optional[str] = ...,
        driver: Optional[str] = ...,
        reserve: Optional[bool] = ...,
        ssh_keys: Optional[Sequence[str]] = ...,
        command: Optional[Sequence[str]] = ...,
        env: Optional[Sequence[str]] = ...,
        wait: Literal[False],
        timeout: Optional[float] = ...,
        **extra: Any,
    ) -> Pending: ...

    def create_instance(
        self,
        image: str,
        *,
        name: Optional[str] = None,
        hostname: Optional[str] = None,
        network: Optional[str] = None,
        cpus: Optional[float] = None,
        memory: Optional[str] = None,
        disk: Optional[str] = None,
        expiry: Optional[str] = None,
        driver: Optional[str] = None,
        reserve: Optional[bool] = None,
        ssh_keys: Optional[Sequence[str]] = None,
        command: Optional[Sequence[str]] = None,
        env: Optional[Sequence[str]] = None,
        wait: bool = True,
        timeout: Optional[float] = None,
        **extra: Any,
    ) -> Union[Instance, Pending]:
        """Create an instance of `image`. With `wait=True` (default) the answer comes once
        it runs (or is created, for `reserve=True`) and is the `Instance`; with
        `wait=False` it comes at once as `Pending(instance, operation)`. `extra` passes
        fields this client does not know yet."""
        body: Dict[str, Any] = {"image": image}
        for k, v in (
            ("name", name),
            ("hostname", hostname),
            ("network", network),
            ("cpus", cpus),
            ("memory", memory),
            ("disk", disk),
            ("expiry", expiry),
            ("driver", driver),
            ("reserve", reserve),
            ("ssh_keys", list(ssh_keys) if ssh_keys is not None else None),
            ("command", list(command) if command is not None else None),
            ("env", list(env) if env is not None else None),
        ):
            if v is not None:
                body[k] = v
        body.update(extra)
        doc = self._call(
            "POST",
            f"{API}/instances",
            body,
            query={"wait": True} if wait else None,
            timeout=timeout or (LONG_TIMEOUT if wait else None),
        )
        if isinstance(doc, dict) and "instance" in doc and "id" not in doc:
            op = doc.get("operation")
            pending = Pending(
                Instance.from_json(doc["instance"]),
                Operation.from_json(op) if isinstance(op, dict) else None,
            )
            return pending.instance if wait else pending
        inst = Instance.from_json(doc)
        return inst if wait else Pending(inst, None)

    def destroy(self, ref: str) -> str:
        """Destroy an instance (stopping it first); returns its id."""
        doc = self._call("DELETE", f"{API}/instances/{self._ref(ref)}", timeout=LONG_TIMEOUT)
        return str(doc.get("destroyed")) if isinstance(doc, dict) else str(doc)

    def _action(self, ref: str, action: str, body: Any = None) -> Instance:
        return Instance.from_json(
            self._call(
                "POST",
                f"{API}/instances/{self._ref(ref)}/{action}",
                body if body is not None else {},
                timeout=LONG_TIMEOUT,
            )
        )

    def start(self, ref: str) -> Instance:
        return self._action(ref, "start")

    def stop(self, ref: str, force: bool = False) -> Instance:
        """Stop gracefully, or kill with `force=True`."""
        return self._action(ref, "stop", {"force": force})

    def pause(self, ref: str) -> Instance:
        return self._action(ref, "pause")

    def resume(self, ref: str) -> Instance:
        return self._action(ref, "resume")

    def extend(self, ref: str, by: str) -> Instance:
        """Move the expiry later by a duration such as `2h` or `1d`."""
        return self._action(ref, "extend", {"by": by})

    def migrate(self, ref: str, to: str, shared_storage: bool = False) -> Migration:
        """Move an instance to node `to` (several hosts): a VM live, an oci instance cold
        (stopped, its writable layer copied, started). `shared_storage=True`: both nodes open
        the same disk file instead of copying it."""
        return Migration.from_json(
            self._call(
                "POST",
                f"{API}/instances/{self._ref(ref)}/migrate",
                {"to": to, "shared_storage": shared_storage},
                timeout=LONG_TIMEOUT,
            )
        )

    # Jobs

    def submit_job(
        self,
        command: Optional[Sequence[str]] = None,
        *,
        jsdl: Optional[Union[str, bytes]] = None,
        **fields: Any,
    ) -> Job:
        """Queue a batch job: a `command` with request fields (`image`, `cpus`, `memory`,
        `walltime`, `queue`, `stage_out` …, as `vfarm job submit`), or a JSDL 1.0 document.
        The job's `warnings` name what the request asks for that vfarm does not apply."""
        if jsdl is not None:
            if command is not None or fields:
                raise VfarmError(
                    0, "invalid_argument", "give a JSDL document or a command, not both", "jsdl"
                )
            text = jsdl.encode() if isinstance(jsdl, str) else jsdl
            doc = self._call("POST", f"{API}/jobs", raw=(text, "application/xml"))
        else:
            body = dict(fields)
            body["command"] = list(command or [])
            doc = self._call("POST", f"{API}/jobs", body)
        return Job.from_json({**doc["job"], "warnings": doc.get("warnings", [])})

    def jobs(self, state: Optional[str] = None, owner: Optional[str] = None) -> List[Job]:
        """The caller's jobs (all, for admins), optionally of one state or owner."""
        q = {k: v for k, v in (("state", state), ("owner", owner)) if v is not None}
        return [Job.from_json(j) for j in self._call("GET", f"{API}/jobs", query=q)]

    def job(self, id: Union[int, str]) -> Job:
        """One job with its spec, events and outputs."""
        return Job.from_json(self._call("GET", f"{API}/jobs/{self._ref(str(id))}"))

    def cancel_job(self, id: Union[int, str]) -> str:
        """Ask for the job's end; the answer is its state after the request."""
        return str(self._call("POST", f"{API}/jobs/{self._ref(str(id))}/cancel")["state"])

    def wait_job(self, id: Union[int, str], timeout: float = 600, poll: float = 0.5) -> Job:
        """Poll until the job ends (succeeded, failed or cancelled)."""
        deadline = time.monotonic() + timeout
        while True:
            j = self.job(id)
            if j.state in ("succeeded", "failed", "cancelled"):
                return j
            if time.monotonic() >= deadline:
                raise VfarmError(0, "timeout", f"job {id} still {j.state} after {timeout} s")
            time.sleep(poll)

    def job_output(self, id: Union[int, str], name: str) -> bytes:
        """An output file the job kept (its `outputs`)."""
        path = f"{API}/jobs/{self._ref(str(id))}/outputs/{self._ref(name)}"
        with self._open("GET", path, accept="application/octet-stream") as resp:
            data: bytes = resp.read()
        return data

    # Virtual grids

    def grid_up(
        self,
        file: Union[str, "os.PathLike[str]"],
        name: Optional[str] = None,
        expiry: Optional[str] = None,
        keep_on_failure: bool = False,
        timeout: Optional[float] = None,
    ) -> Grid:
        """Bring a grid up from a grid file (`vfarm grid up`): `file` is its TOML text, or a
        path to it (a `pathlib.Path`, or a one-line string naming an existing file). `name`
        and `expiry` (`2d`) override the file's. The answer comes when every member runs,
        so the wait is long; a refusal of the file names its field (`roles.wn.count`)."""
        body: Dict[str, Any] = {"file": self._grid_text(file)}
        if name is not None:
            body["name"] = name
        if expiry is not None:
            body["expiry"] = expiry
        if keep_on_failure:
            body["keep_on_failure"] = True
        return Grid.from_json(
            self._call("POST", f"{API}/grids", body, timeout=timeout or LONG_TIMEOUT)
        )

    @staticmethod
    def _grid_text(file: Union[str, "os.PathLike[str]"]) -> str:
        # A grid file's text has a newline, a `[` or a `=`; any other string is a path.
        if isinstance(file, str) and ("\n" in file or "[" in file or "=" in file):
            return file
        path = os.fspath(file)
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise VfarmError(
                0, "invalid_argument", f"cannot read grid file {path}: {e}", "file"
            ) from None

    def grids(self) -> List[Grid]:
        """The caller's grids (an admin's: everyone's)."""
        return [Grid.from_json(g) for g in self._call("GET", f"{API}/grids")]

    def grid(self, name: str) -> Grid:
        """One grid with its members: roles, instances, states, host names, addresses."""
        return Grid.from_json(self._call("GET", f"{API}/grids/{self._ref(name)}"))

    def grid_down(self, name: str) -> str:
        """Destroy every member of the grid (certificates revoked, names, addresses and its
        own network given back), then the grid; returns its name."""
        self._call("DELETE", f"{API}/grids/{self._ref(name)}", timeout=LONG_TIMEOUT)
        return name

    def grid_extend(self, name: str, by: str) -> Grid:
        """Move the grid's expiry, and every member's, later by `by` (`2h`, `1d`)."""
        return Grid.from_json(
            self._call("POST", f"{API}/grids/{self._ref(name)}/extend", {"by": by})
        )

    # Networks

    def networks(self) -> List[Network]:
        """The site's instance networks; `create_instance(network=...)` joins one (`"none"`:
        loopback only; unset: the site's default)."""
        return [Network.from_json(n) for n in self._call("GET", f"{API}/networks")]

    def network(self, name: str) -> Network:
        return Network.from_json(self._call("GET", f"{API}/networks/{self._ref(name)}"))

    # Hosts (several hosts; admins only)

    def hosts(self) -> List[Host]:
        """The physical host inventory: capacity, what is placed there, last heartbeat."""
        return [Host.from_json(h) for h in self._call("GET", f"{API}/hosts")]

    def host(self, name: str) -> Host:
        return Host.from_json(self._call("GET", f"{API}/hosts/{self._ref(name)}"))

    def add_host(self, name: str, expires: Optional[str] = None) -> HostToken:
        """A one-time join token for the node `name` (valid 1h unless `expires`, e.g. `2d`)."""
        body: Dict[str, Any] = {"name": name}
        if expires is not None:
            body["expires"] = expires
        return HostToken.from_json(self._call("POST", f"{API}/hosts", body))

    def drain(self, name: str) -> Host:
        """No new instances go to `name`; those there stay."""
        return Host.from_json(self._call("POST", f"{API}/hosts/{self._ref(name)}/drain", {}))

    def undrain(self, name: str) -> Host:
        return Host.from_json(self._call("POST", f"{API}/hosts/{self._ref(name)}/undrain", {}))

    def remove_host(self, name: str) -> Host:
        """Remove a host without instances; a joined node's certificate is revoked."""
        return Host.from_json(self._call("DELETE", f"{API}/hosts/{self._ref(name)}"))

    # Tokens (everyone their own; admins anyone's)

    def tokens(self, user: Optional[str] = None) -> List[Token]:
        """The caller's tokens, never their secrets; an admin's: everyone's, or `user`'s."""
        query = {"user": user} if user is not None else None
        return [Token.from_json(t) for t in self._call("GET", f"{API}/tokens", query=query)]

    def create_token(
        self, name: Optional[str] = None, expiry: Optional[str] = None, user: Optional[str] = None
    ) -> Token:
        """A new token for the caller (admins: for `user`); its secret, `.token`, is shown
        only now. `expiry` e.g. "12h", "30d" (default: until revoked)."""
        body = {k: v for k, v in (("name", name), ("expiry", expiry), ("user", user)) if v}
        return Token.from_json(self._call("POST", f"{API}/tokens", body))

    def revoke_token(self, id: str) -> Token:
        """Revoke a token by id (or the whole token); another user's is `token_not_found`."""
        return Token.from_json(self._call("DELETE", f"{API}/tokens/{self._ref(id)}"))

    # Image-list subscriptions (admins only)

    def subscriptions(self) -> List[Subscription]:
        return [Subscription.from_json(s) for s in self._call("GET", f"{API}/subscriptions")]

    def subscription(self, ref: str) -> Dict[str, Any]:
        """`{"subscription", "list", "images"}`: the subscription, its accepted list and
        that list's images."""
        doc: Dict[str, Any] = self._call("GET", f"{API}/subscriptions/{self._ref(ref)}")
        return doc

    def add_subscription(
        self,
        url: str,
        ca_dir: str,
        endorsers: Sequence[str] = (),
        no_cache: bool = False,
        hook: Optional[str] = None,
        update: bool = True,
    ) -> "tuple[Subscription, Optional[SubscriptionUpdate]]":
        """Subscribe to a list URL; `ca_dir` (and a `file://` URL) are paths on the service's
        machine. With `update`, the first update runs now and its report comes back."""
        body: Dict[str, Any] = {
            "url": url,
            "ca_dir": ca_dir,
            "endorsers": list(endorsers),
            "no_cache": no_cache,
            "no_update": not update,
        }
        if hook is not None:
            body["hook"] = hook
        doc = self._call("POST", f"{API}/subscriptions", body, timeout=LONG_TIMEOUT)
        report = doc.get("update")
        return (
            Subscription.from_json(doc["subscription"]),
            SubscriptionUpdate.from_json(report) if report else None,
        )

    def update_subscriptions(
        self, ref: Optional[str] = None, at: Optional[str] = None
    ) -> List[SubscriptionUpdate]:
        """Fetch, verify and apply new list versions: of `ref`, or (None) of every
        subscription. `at` judges validity at that time (YYYY-MM-DDTHH:MM:SSZ)."""
        body: Dict[str, Any] = {"subscription": ref} if ref is not None else {"all": True}
        if at is not None:
            body["at"] = at
        doc = self._call("POST", f"{API}/subscriptions/update", body, timeout=LONG_TIMEOUT)
        return [SubscriptionUpdate.from_json(r) for r in doc]

    def revoke_subscription(self, ref: str, reason: Optional[str] = None) -> Dict[str, Any]:
        """Revoke a whole subscription: its images leave the cache, new instances from them
        are refused, its list is no longer fetched."""
        return self.revoke_listed("subscription", ref, reason)

    def revoke_listed(self, kind: str, target: str, reason: Optional[str] = None) -> Dict[str, Any]:
        """Revoke an `image`, an `endorser` or a `subscription`: `{"kind", "target",
        "revoked_images", "removed_from_cache"}`."""
        body: Dict[str, Any] = {"kind": kind, "target": target}
        if reason is not None:
            body["reason"] = reason
        doc: Dict[str, Any] = self._call("POST", f"{API}/revocations", body)
        return doc

    def remove_subscription(self, ref: str) -> str:
        """Remove a subscription (its cached images expire); its id."""
        doc = self._call("DELETE", f"{API}/subscriptions/{self._ref(ref)}")
        return str(doc["removed"])

    def exec(
        self,
        ref: str,
        command: Union[str, Sequence[str]],
        env: Optional[Sequence[str]] = None,
        timeout: Optional[float] = None,
        limit: Optional[str] = None,
    ) -> ExecResult:
        """Run a command in a running instance and collect its exit code and output. A
        string runs through `sh -c`; a list runs as it is. `limit` is the service-side time
        limit (e.g. "90s", "30m"; default 5m, at most 1h): the command is killed then
        (`timed_out`); output past 8 MiB per stream is dropped (`truncated`)."""
        argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
        body: Dict[str, Any] = {"command": argv}
        if env is not None:
            body["env"] = list(env)
        if limit is not None:
            body["timeout"] = limit
        return ExecResult.from_json(
            self._call(
                "POST",
                f"{API}/instances/{self._ref(ref)}/exec",
                body,
                timeout=timeout or LONG_TIMEOUT,
            )
        )

    def console(self, ref: str) -> str:
        """The instance's console log (text)."""
        return self._text(f"{API}/instances/{self._ref(ref)}/console")

    # --- snapshots ------------------------------------------------------------------------

    def snapshots(self, ref: str) -> List[Snapshot]:
        doc = self._call("GET", f"{API}/instances/{self._ref(ref)}/snapshots")
        return [Snapshot.from_json(s) for s in doc or []]

    def create_snapshot(self, ref: str, name: str) -> Snapshot:
        return Snapshot.from_json(
            self._call(
                "POST",
                f"{API}/instances/{self._ref(ref)}/snapshots",
                {"name": name},
                timeout=LONG_TIMEOUT,
            )
        )

    def revert_snapshot(self, ref: str, name: str) -> Instance:
        return Instance.from_json(
            self._call(
                "POST",
                f"{API}/instances/{self._ref(ref)}/snapshots/{self._ref(name)}/revert",
                {},
                timeout=LONG_TIMEOUT,
            )
        )

    def remove_snapshot(self, ref: str, name: str) -> str:
        doc = self._call(
            "DELETE",
            f"{API}/instances/{self._ref(ref)}/snapshots/{self._ref(name)}",
            timeout=LONG_TIMEOUT,
        )
        return str(doc.get("removed")) if isinstance(doc, dict) else str(doc)

    # --- live updates ---------------------------------------------------------------------

    def events(self, timeout: Optional[float] = EVENTS_TIMEOUT) -> EventStream:
        """Open the Server-Sent Events stream. Iterate the result for `Event`s (`event`
        `instance` carries an Instance: `ev.instance`); `timeout` bounds the wait for the
        next line (the server sends a keep-alive every 15 s), None waits forever."""
        # The socket timeout applies to every read of the stream, not only the connect.
        resp = self._open(
            "GET",
            f"{API}/events",
            accept="text/event-stream",
            timeout=FOREVER if timeout is None else timeout,
        )
        ctype = resp.headers.get("Content-Type", "")
        if "text/event-stream" not in ctype:
            resp.close()
            raise VfarmError(
                resp.status, "invalid_response", f"/events answered {ctype!r}, not an event stream"
            )
        return EventStream(resp)
