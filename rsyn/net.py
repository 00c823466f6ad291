"""HTTP requests to servers rsyn does not control: one deadline for the whole request, a byte cap, no private hosts.

Image URLs come from crawled pages and LLM servers can misbehave, so every request made here

- ends by its deadline, whatever the server does: connect, TLS handshake, headers and body together. A
  socket timeout only bounds each read, and a server dripping one byte a second never trips it, so a
  watchdog thread shuts the socket down when the deadline passes and the blocked read returns at once;
- reads at most `max_bytes` of body (declared or not, chunked or not) and never holds more;
- optionally refuses hosts that resolve to loopback, private, link-local, multicast, unspecified or
  reserved addresses (SSRF). The name is resolved here, every address checked, and the socket connected
  to the checked address itself, so a second DNS answer cannot point it elsewhere (DNS rebinding). The
  check runs for every hop of a redirect chain;
- follows at most `max_redirects` redirects, whatever the retries.

Everything that goes wrong raises `HTTPFailure(reason, detail)`. Retries are the callers' business (an
image download and an LLM request retry differently); `Reply` carries status, headers and body.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import urllib3
import urllib3.util.connection
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from rsyn.errors import CountedError

REDIRECTS = (301, 302, 303, 307, 308)
ERROR_BODY_BYTES = 4096  # of a 4xx/5xx answer: enough for a message, no more
LATE = "the whole request took longer than its deadline"
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class HTTPFailure(CountedError):
    """`reason`: timeout, connect_failed, transport, too_large, bad_url, private_address, too_many_redirects or
    bad_redirect."""


@dataclass
class Reply:
    status: int
    headers: object  # urllib3's HTTPHeaderDict: case-insensitive
    body: bytes  # the whole body for 2xx; at most ERROR_BODY_BYTES otherwise
    url: str  # after redirects


# --------------------------------------------------------------------------- which addresses are private


def address_refusal(address) -> str | None:
    """Why a default run does not connect to this IP address (e.g. "loopback"), or None for a public one.

    IPv6 forms that carry an IPv4 address (IPv4-mapped ::ffff:a.b.c.d, 6to4, NAT64) are judged by that address.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    if ip.version == 6:
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return address_refusal(embedded)
    for kind, flag in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
    ):
        if flag:
            return kind
    if not ip.is_global:  # e.g. 100.64.0.0/10, the carrier-grade NAT range
        return "non-global"
    return None


def _literal_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
        return True
    except ValueError:
        return False


# getaddrinfo cannot be interrupted: it runs on these threads so that a slow resolver costs a request its
# deadline, not more (the lookup itself finishes by the system resolver's own timeout). One pool per
# process: a pool inherited through fork has no threads left.
_resolver: ThreadPoolExecutor | None = None
_resolver_lock = threading.Lock()


def _resolver_pool() -> ThreadPoolExecutor:
    global _resolver
    with _resolver_lock:
        if _resolver is None:
            _resolver = ThreadPoolExecutor(16, thread_name_prefix="rsyn-dns")
        return _resolver


def _forget_resolver() -> None:
    global _resolver, _resolver_lock
    _resolver, _resolver_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_resolver)


def _resolve(host: str, port: int, guard: _Guard) -> list[str]:
    host = host.strip("[]")
    if _literal_ip(host):
        return [host]
    future = _resolver_pool().submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=max(0.001, guard.remaining()))
    except FutureTimeout:
        future.cancel()
        raise HTTPFailure("timeout", f"looking up {host} took too long") from None
    except (socket.gaierror, UnicodeError) as exc:
        raise HTTPFailure("connect_failed", f"cannot resolve {host} ({exc})"[:200]) from None
    return list(dict.fromkeys(info[4][0] for info in infos))


# --------------------------------------------------------------------------- the deadline watchdog


def _cut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a read blocked on this socket in another thread
    except OSError:
        pass
    sock.close()


class _Guard:
    """One request's deadline, address rule and the sockets to cut when the deadline passes."""

    def __init__(self, until: float, check):
        self.until = until
        self.check = check  # address -> refusal or None; None: every address is fine
        self.expired = False
        self.finished = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return self.until - time.monotonic()

    def watch(self, sock: socket.socket) -> None:
        # a duplicate of the descriptor: shutting it down cuts the connection even when TLS has wrapped (and
        # detached) the original socket object, and closing it later never touches a reused descriptor number
        try:
            dup = socket.fromfd(sock.fileno(), sock.family, sock.type)
        except OSError:
            return
        with self._lock:
            if not self.expired and not self.finished:
                self._sockets.append(dup)
                return
        _cut(dup) if self.expired else dup.close()

    def expire(self) -> None:
        with self._lock:
            if self.finished:
                return
            self.expired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _cut(sock)

    def finish(self) -> bool:
        """Stop watching; True when the deadline had passed already (the connection may be cut)."""
        with self._lock:
            self.finished = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()
        return self.expired


class _Watchdog:
    """One daemon thread expiring guards at their deadlines (finished ones are skipped when their time comes)."""

    def __init__(self):
        self._heap: list = []
        self._cond = threading.Condition()
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, guard: _Guard) -> None:
        with self._cond:
            heapq.heappush(self._heap, (guard.until, next(self._order), guard))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="rsyn-deadlines", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].finished:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)[2].expire()

    def _after_fork(self) -> None:
        self.__init__()  # the thread did not survive the fork


_WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=_WATCHDOG._after_fork)
_local = threading.local()  # the guard of the request this thread is making


def _guard() -> _Guard:
    guard = getattr(_local, "guard", None)
    return guard if guard is not None else _Guard(float("inf"), address_refusal)


# --------------------------------------------------------------------------- urllib3 with the guard


class _GuardedConnection:
    """Connects to checked addresses only, and puts every socket under the request's deadline."""

    def _new_conn(self) -> socket.socket:
        guard = _guard()
        name = self._dns_host
        addresses = _resolve(name, self.port, guard)
        if guard.check is not None:
            refusals = [(address, guard.check(address)) for address in addresses]
            allowed = [address for address, refusal in refusals if refusal is None]
            if not allowed:
                address, refusal = refusals[0]
                shown = name if name == address else f"{name} ({address})"
                article = "an" if refusal[0] in "aeiou" else "a"
                raise HTTPFailure("private_address", f"{shown} is {article} {refusal} address")
            addresses = allowed
        error = None
        for address in addresses:
            if guard.remaining() <= 0:
                break
            # connect to the address checked above, not to a new DNS answer; self.host stays the name (Host
            # header, TLS server name and certificate check)
            try:
                sock = urllib3.util.connection.create_connection(
                    (address, self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError:
                error = urllib3.exceptions.ConnectTimeoutError(
                    self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
                )
                continue
            except OSError as exc:
                error = urllib3.exceptions.NewConnectionError(self, f"Failed to establish a new connection: {exc}")
                continue
            guard.watch(sock)
            return sock
        if error is not None:
            raise error
        raise HTTPFailure("timeout", "no time left to connect")

    def request(self, *args, **kwargs):
        if self.sock is not None:  # a pooled connection: watch it for this request
            _guard().watch(self.sock)
        return super().request(*args, **kwargs)


class _Connection(_GuardedConnection, HTTPConnection):
    pass


class _TLSConnection(_GuardedConnection, HTTPSConnection):
    pass


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


class BoundedHTTP:
    """A thread-safe connection pool whose requests are bounded (see the module's docstring)."""

    def __init__(self, *, timeout: float, headers: dict | None = None, pool_size: int = 16):
        self.timeout = timeout  # seconds to connect and for each read, within the deadline
        self.headers = dict(headers or {})  # sent with every request
        self._pools = urllib3.PoolManager(num_pools=64, maxsize=pool_size, block=False, retries=False)
        self._pools.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}

    def request(
        self,
        method: str,
        url: str,
        *,
        until: float,
        max_bytes: int,
        body: bytes | None = None,
        headers: dict | None = None,
        max_redirects: int = 0,
        allow_private: bool = True,
    ) -> Reply:
        """One request, done by time.monotonic() `until`; `allow_private=False` refuses non-public addresses."""
        guard = _Guard(until, None if allow_private else address_refusal)
        previous, _local.guard = getattr(_local, "guard", None), guard
        _WATCHDOG.add(guard)
        try:
            return self._follow(method, url, body, {**self.headers, **(headers or {})}, max_redirects, max_bytes, guard)
        except HTTPFailure as exc:
            if guard.expired and exc.reason != "timeout":
                raise HTTPFailure("timeout", LATE) from None
            raise
        except urllib3.exceptions.LocationValueError as exc:  # LocationParseError included
            raise HTTPFailure("bad_url", _short(exc)) from None
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            if guard.expired:
                raise HTTPFailure("timeout", LATE) from None
            raise _failure(exc) from None
        finally:
            guard.finish()
            _local.guard = previous

    def _follow(self, method, url, body, headers, max_redirects, max_bytes, guard) -> Reply:
        for hop in range(max_redirects + 1):
            try:
                scheme = urlsplit(url).scheme.lower()
            except ValueError as exc:  # e.g. an unclosed [IPv6
                raise HTTPFailure("bad_url" if hop == 0 else "bad_redirect", _short(exc)) from None
            if scheme not in ("http", "https"):
                raise HTTPFailure("bad_url" if hop == 0 else "bad_redirect", f"not http(s): {scheme or 'no scheme'}")
            left = guard.remaining()
            if left <= 0:
                raise HTTPFailure("timeout", LATE)
            per_step = min(self.timeout, left)
            response = self._pools.urlopen(
                method,
                url,
                body=body,
                headers=headers,
                redirect=False,
                retries=False,
                preload_content=False,
                decode_content=True,
                timeout=urllib3.Timeout(connect=per_step, read=per_step),
            )
            if max_redirects and response.status in REDIRECTS:
                location = response.headers.get("Location")
                _discard(response)
                if not location:
                    raise HTTPFailure("bad_redirect", f"HTTP {response.status} without a Location")
                url = urljoin(url, location)
                if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                    method, body = "GET", None
                continue
            ok = 200 <= response.status < 300
            try:
                data, whole = _read(response, max_bytes if ok else ERROR_BODY_BYTES, strict=ok)
            except BaseException:
                _discard(response)
                raise
            if guard.finish():  # cut by the watchdog, perhaps after the last byte: not reusable, and late
                _discard(response)
                raise HTTPFailure("timeout", LATE)
            if whole:
                response.release_conn()
            else:
                _discard(response)
            return Reply(response.status, response.headers, data, url)
        raise HTTPFailure("too_many_redirects", f"more than {max_redirects} redirects")

    def close(self) -> None:
        self._pools.clear()


def _read(response, cap: int, strict: bool) -> tuple[bytes, bool]:
    """(at most `cap` bytes of body, whether that is all of it); more is too_large when `strict`, cut off
    otherwise (an error page)."""
    declared = response.headers.get("Content-Length")
    if strict and declared and declared.isdigit() and int(declared) > cap:
        raise HTTPFailure("too_large", f"Content-Length {int(declared):,} bytes > {cap:,}")
    chunks, size = [], 0
    while True:
        # read1 returns what has arrived (at most 64 KiB, decompressed): never more than cap + 64 KiB held
        chunk = response.read1(1 << 16)
        if not chunk:
            break
        size += len(chunk)
        if size > cap:
            if strict:
                raise HTTPFailure("too_large", f"more than {cap:,} bytes")
            chunks.append(chunk[: len(chunk) - (size - cap)])
            return b"".join(chunks), False
        chunks.append(chunk)
    return b"".join(chunks), True


def _discard(response) -> None:
    # the body was not read to its end: this connection cannot serve another request
    response.close()
    response.release_conn()


def _failure(exc: BaseException) -> HTTPFailure:
    exceptions = urllib3.exceptions
    if isinstance(exc, exceptions.NewConnectionError) and "timed out" not in str(exc).lower():
        return HTTPFailure("connect_failed", _short(exc))  # subclasses ConnectTimeoutError: asked first
    if isinstance(exc, (exceptions.TimeoutError, socket.timeout)) or "timed out" in str(exc).lower():
        return HTTPFailure("timeout", _short(exc))
    if isinstance(exc, exceptions.NameResolutionError):
        return HTTPFailure("connect_failed", _short(exc))
    if isinstance(exc, exceptions.ProtocolError) and "IncompleteRead" in str(exc):
        return HTTPFailure("transport", "connection closed before the whole body arrived")
    return HTTPFailure("transport", _short(exc))


def _short(exc: BaseException) -> str:
    # urllib3's connection errors carry (connection object, message): the object's repr is noise
    args = getattr(exc, "args", ())
    text = args[-1] if len(args) == 2 and isinstance(args[-1], str) else str(exc)
    return (" ".join(text.split()) or type(exc).__name__)[:200]
