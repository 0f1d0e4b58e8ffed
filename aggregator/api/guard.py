"""Browser-borne requests refused: cross-site writes (CSRF) and DNS rebinding, in every auth mode.

With no token configured the listener binds 127.0.0.1 — which a browser on the same machine can
still reach. A page on ``attacker.example`` could POST ``text/plain`` (no CORS preflight) to create
a silence matching everything, or, after rebinding its own name to 127.0.0.1, read the alerts as a
same-origin page. So, for every route but the machine endpoints (``/v1/ingest``, which only takes
``application/x-msgpack`` and so always needs a preflight, and the probes and ``/metrics``):

* the ``Host`` header must name this aggregator: an IP literal, ``localhost``, the host of
  ``listen`` or ``public_url``, or one of ``allowed_hosts`` (``*``: any) — a rebound name is none
  of these (403);
* a state-changing request (not GET/HEAD/OPTIONS) with an ``Origin`` must come from the origin it
  is sent to (403 otherwise; browsers send ``Origin`` on every cross-site POST), and one with a
  body must say ``Content-Type: application/json`` (415), which a cross-site page cannot send
  without a preflight the aggregator never grants.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from aggregator.api.params import error_response

__all__ = ["MACHINE_PATHS", "allowed_host_names", "guard_middleware", "host_name"]

#: Paths only machines call (sidecars, probes, Prometheus): no browser checks, so service DNS names work.
MACHINE_PATHS = frozenset({"/v1/ingest", "/healthz", "/readyz", "/metrics"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOCAL_NAMES = frozenset({"localhost", "localhost."})


def host_name(authority: str) -> str:
    """The host of ``host[:port]`` or ``[v6]:port``, lower case, without brackets.

    >>> host_name("Example.COM:9090"), host_name("[::1]:9090"), host_name("127.0.0.1")
    ('example.com', '::1', '127.0.0.1')
    """
    a = authority.strip().lower()
    if a.startswith("["):
        return a[1:a.find("]")] if "]" in a else a
    return a.rpartition(":")[0] if a.count(":") == 1 else a


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def allowed_host_names(listen: str, public_url: str, allowed_hosts: Iterable[str]) -> frozenset[str]:
    """The names besides IP literals and ``localhost`` that ``Host`` may carry."""
    names = {host_name(h) for h in allowed_hosts if h}
    names.add(host_name(listen))
    if public_url:
        names.add((urlsplit(public_url).hostname or "").lower())
    return frozenset(n for n in names if n)


def guard_middleware(allowed: frozenset[str]) -> Middleware:
    """Refuse foreign ``Host``s, cross-origin writes and writes without a JSON content type (see the module)."""
    any_host = "*" in allowed

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in MACHINE_PATHS:
            return await handler(request)
        authority = request.headers.get("Host", "")
        name = host_name(authority)
        if not (any_host or _is_ip(name) or name in _LOCAL_NAMES or name in allowed):
            return error_response(403, f"Host {authority!r} is not this aggregator's (add it to allowed_hosts, or "
                                  "set public_url)")
        if request.method not in _SAFE_METHODS:
            origin = request.headers.get("Origin")
            if origin is not None and (urlsplit(origin).netloc.lower() != authority.lower() or not authority):
                return error_response(403, f"cross-origin request refused: Origin {origin!r} is not "
                                      f"the origin of this aggregator")
            has_body = bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "")
            if has_body and request.content_type != "application/json":
                return error_response(415, f"Content-Type must be application/json, got {request.content_type!r}")
        return await handler(request)

    return middleware
