"""What the viewer lets in: the Host header check (DNS rebinding), read-only when reachable from other machines,
and a free port before Dash starts.

1. loopback: a bound address is loopback when it is 127.0.0.0/8, ::1 or `localhost`.
2. host check: every request's Host (port stripped) must name the bound address, or a loopback name when bound to
   loopback; otherwise 403 (a page on evil.example that resolves to 127.0.0.1 must not read the graphs). Bound to a
   wildcard address (0.0.0.0, ::) any Host is accepted: the names that reach it are unknown.
3. writes: bound to a non-loopback address the viewer is read-only (Save refused) unless --allow-write.
4. port: a bind test before the app is built, so a busy or invalid port is one error line.
"""

from __future__ import annotations

import ipaddress
import socket

from flask import Flask, Response, request

from tracer.errors import ConfigError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def is_loopback(host: str) -> bool:
    """Step 1."""
    h = host.strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def allowed_hosts(bound: str) -> frozenset[str] | None:
    """Step 2: the Host names accepted for a bound address (lower case, no port); None: any."""
    h = bound.strip("[]").lower()
    if h in WILDCARDS:
        return None
    return frozenset({h} | (LOOPBACK_NAMES if is_loopback(h) else set()))


def request_host_name(host_header: str) -> str:
    """`name:port`, `[v6]:port` or `name` -> the name, lower case."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def install_host_check(server: Flask, bound: str) -> None:
    """Step 2: refuse (403) every request whose Host header does not name the bound address."""
    allowed = allowed_hosts(bound)
    if allowed is None:
        return

    @server.before_request
    def _check_host() -> Response | None:
        name = request_host_name(request.headers.get("Host", ""))
        if name not in allowed:
            return Response(f"forbidden host {name!r}: this viewer serves {sorted(allowed)}\n", status=403,
                            mimetype="text/plain")  # fmt: skip
        return None


def read_only(bound: str, allow_write: bool) -> bool:
    """Step 3."""
    return not allow_write and not is_loopback(bound)


def check_port_free(host: str, port: int) -> None:
    """Step 4: ConfigError unless `port` is valid and `host:port` can be bound now."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port must be in 1..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError(f"cannot listen on {host}: {e}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself will
        try:
            s.bind(addr)
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e} (is another viewer running? "
                              "pick another --port)") from None  # fmt: skip
