"""The alert feed over gRPC: ``sentinel.v1.AlertService`` (proto/sentinel/v1/alerts.proto) on grpc.aio.

``Watch`` streams the :class:`~aggregator.alerting.hub.AlertHub`'s events (what the SSE stream
carries), ``GetAlert`` and ``ListAlerts`` read the store (what ``GET /api/v1/alerts`` serves). All
three are reads: with API tokens configured any role (viewer, operator, admin) may call them, with
``authorization: Bearer <token>`` metadata; without tokens there is no auth, as in the REST API.

The handlers are registered as generic handlers around the generated *messages* rather than
through the generated ``alerts_pb2_grpc`` module: that module is untyped (mypy --strict would
reject every call into it) and refuses to import on a grpcio older than the grpcio-tools that
generated it. The method paths are the proto's; tests call them through the generated stub.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
import grpc.aio
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import CollectorRegistry, Counter

from aggregator.alerting.hub import AlertFilter, AlertHub
from aggregator.alerting.store import AlertQuery, AlertStore, StoreError
from sentinel.alerts import iso_time, parse_time
from sentinel.v1 import alerts_pb2

__all__ = ["SERVICE", "AlertGrpcServer", "alert_from_proto", "alert_to_proto"]

log = logging.getLogger(__name__)

SERVICE = "sentinel.v1.AlertService"
#: Roles that may read alerts; any other role the token callable knows (an ingest token) may not.
READ_ROLES = frozenset({"viewer", "operator", "admin"})
DEFAULT_LIMIT = 100  # as GET /api/v1/alerts

_OPTIONAL_STR = ("service_name", "model", "root_cause", "runbook_url", "acknowledged_by", "resolved_reason",
                 "silenced_by", "storm_id")
_PLAIN_STR = ("alert_id", "severity", "anomaly_type", "detection_method", "summary", "fingerprint", "status")
_TIMES = ("timestamp", "first_seen", "last_seen", "acknowledged_at", "resolved_at", "notified_at", "notify_due")
_MEMBER_TIMES = ("first_seen", "last_seen", "resolved_at")
_DETAIL_NUMS = ("value", "baseline", "threshold", "deviation_sigma")

Context = grpc.aio.ServicerContext[Any, Any]


class _Undecodable:
    """What a request that is not a valid message decodes to; the handler answers INVALID_ARGUMENT.

    grpc's own deserializer failure is an UNKNOWN status and an ERROR traceback per call, logged
    before the call is authenticated: a flood of garbage would flood the log.
    """

    __slots__ = ("error", "message")

    def __init__(self, message: str, error: Exception) -> None:
        self.message, self.error = message, error


def _lenient(cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except Exception as e:  # DecodeError, and RecursionError on deep nesting
            return _Undecodable(cls.DESCRIPTOR.full_name, e)
    return parse


# --- conversion ---------------------------------------------------------------------------------

def _timestamp(text: str | None) -> Timestamp | None:
    if not text:
        return None
    ts = Timestamp()
    try:
        # Through datetime rather than float seconds: the milliseconds survive exactly.
        ts.FromDatetime(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        ts.FromNanoseconds(parse_time(text))  # unix seconds as text
    return ts


def alert_to_proto(d: dict[str, Any]) -> alerts_pb2.Alert:
    """An :meth:`Alert.to_dict` document as the ``sentinel.v1.Alert`` message (``None`` stays unset)."""
    msg = alerts_pb2.Alert()
    for key in _PLAIN_STR:
        setattr(msg, key, d.get(key) or "")
    for key in _OPTIONAL_STR:
        if d.get(key) is not None:
            setattr(msg, key, str(d[key]))
    for key in _TIMES:
        ts = _timestamp(d.get(key))
        if ts is not None:
            getattr(msg, key).CopyFrom(ts)
    _common_to_proto(msg, d)
    # A JSON round trip turns what the dict may hold in memory (tuples, numpy scalars) into what a
    # Struct takes; the store keeps the same JSON, so nothing is lost that the REST API would show.
    msg.context.update(json.loads(json.dumps(d.get("context") or {}, default=str)))
    msg.remediation.extend(str(x) for x in d.get("remediation") or ())
    msg.related_alerts.extend(str(x) for x in d.get("related_alerts") or ())
    msg.labels.update({str(k): str(v) for k, v in (d.get("labels") or {}).items()})
    for m in d.get("members") or ():
        msg.members.append(_member_to_proto(m))
    msg.notifications = max(int(d.get("notifications") or 0), 0)
    return msg


def _common_to_proto(msg: alerts_pb2.Alert | alerts_pb2.AlertMember, d: dict[str, Any]) -> None:
    """What an alert and a member share: confidence, count, peak value, details."""
    msg.confidence = float(d.get("confidence") or 0.0)
    msg.count = max(int(d.get("count") or 0), 0)
    if d.get("peak_value") is not None:
        msg.peak_value = float(d["peak_value"])
    details = d.get("details") or {}
    msg.details.metric = details.get("metric") or ""
    for key in _DETAIL_NUMS:
        if details.get(key) is not None:
            setattr(msg.details, key, float(details[key]))


def _member_to_proto(m: dict[str, Any]) -> alerts_pb2.AlertMember:
    msg = alerts_pb2.AlertMember(key=str(m.get("key") or ""), severity=str(m.get("severity") or ""),
                                 status=str(m.get("status") or ""), notified=bool(m.get("notified")))
    msg.labels.update({str(k): str(v) for k, v in (m.get("labels") or {}).items()})
    _common_to_proto(msg, m)
    for key in _MEMBER_TIMES:
        ts = _timestamp(m.get(key))
        if ts is not None:
            getattr(msg, key).CopyFrom(ts)
    if m.get("silenced_by") is not None:
        msg.silenced_by = str(m["silenced_by"])
    msg.trace_ids.extend(str(t) for t in m.get("trace_ids") or ())
    return msg


def _common_from_proto(msg: alerts_pb2.Alert | alerts_pb2.AlertMember, d: dict[str, Any]) -> None:
    d["confidence"] = msg.confidence
    d["count"] = msg.count
    d["peak_value"] = msg.peak_value if msg.HasField("peak_value") else None
    det = msg.details
    d["details"] = {"metric": det.metric, **{k: getattr(det, k) if det.HasField(k) else None for k in _DETAIL_NUMS}}


def _member_from_proto(msg: alerts_pb2.AlertMember) -> dict[str, Any]:
    d: dict[str, Any] = {"key": msg.key, "labels": dict(msg.labels), "severity": msg.severity}
    _common_from_proto(msg, d)
    for key in _MEMBER_TIMES:
        d[key] = iso_time(getattr(msg, key).ToNanoseconds()) if msg.HasField(key) else None
    d["status"] = msg.status
    d["silenced_by"] = msg.silenced_by if msg.HasField("silenced_by") else None
    d["notified"] = msg.notified
    d["trace_ids"] = list(msg.trace_ids)
    return d


def _struct_to_dict(s: Struct) -> dict[str, Any]:
    # Struct numbers are doubles; give whole numbers back as ints, as the JSON document had them.
    def plain(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
            return int(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    return {k: plain(v) for k, v in s.items()}


def alert_from_proto(msg: alerts_pb2.Alert) -> dict[str, Any]:
    """The inverse of :func:`alert_to_proto`: the ``Alert.to_dict`` document (for Python clients)."""
    d: dict[str, Any] = {key: getattr(msg, key) for key in _PLAIN_STR}
    for key in _OPTIONAL_STR:
        d[key] = getattr(msg, key) if msg.HasField(key) else None
    for key in _TIMES:
        d[key] = iso_time(getattr(msg, key).ToNanoseconds()) if msg.HasField(key) else None
    _common_from_proto(msg, d)
    d["context"] = _struct_to_dict(msg.context)
    d["remediation"] = list(msg.remediation)
    d["related_alerts"] = list(msg.related_alerts)
    d["labels"] = dict(msg.labels)
    d["members"] = [_member_from_proto(m) for m in msg.members]
    d["notifications"] = msg.notifications
    return d


# --- requests -----------------------------------------------------------------------------------

def _values(items: Iterable[str]) -> tuple[str, ...]:
    """Repeated filter values; comma lists are split too (what a grpcurl user types from the REST habit)."""
    return tuple(p.strip() for item in items for p in item.split(",") if p.strip())


def _query(req: alerts_pb2.WatchRequest | alerts_pb2.ListAlertsRequest) -> AlertQuery:
    """The request's filters; raises ``ValueError`` naming the field when one is invalid."""
    kw: dict[str, Any] = {}
    if isinstance(req, alerts_pb2.ListAlertsRequest):
        kw = {"limit": req.limit or DEFAULT_LIMIT, "offset": req.offset,
              "start": req.start.ToNanoseconds() if req.HasField("start") else None,
              "end": req.end.ToNanoseconds() if req.HasField("end") else None}
    q = AlertQuery(severity=_values(req.severity), status=_values(req.status), service=req.service or None,
                   model=req.model or None, anomaly_type=req.anomaly_type or None, **kw)
    q.validate()
    return q


# --- the server ---------------------------------------------------------------------------------

class AlertGrpcServer:
    """``sentinel.v1.AlertService`` on ``listen`` (``host:port``; port 0 picks one, see :attr:`port`).

    ``tokens`` maps a bearer token to its role (``None``: unknown token); ``None`` turns auth off.
    """

    def __init__(self, listen: str, hub: AlertHub, store: AlertStore,
                 tokens: Callable[[str], str | None] | None = None, *, grace_s: float = 1.0,
                 credentials: grpc.ServerCredentials | None = None, registry: CollectorRegistry | None = None) -> None:
        self._invalid = Counter("sentinel_aggregator_grpc_invalid_requests", "AlertService calls whose request "
                                "bytes were not a valid message (answered INVALID_ARGUMENT)", ["method"],
                                registry=registry)
        self._credentials = credentials  # TLS (and client certificates) when given; plaintext otherwise
        self._listen = listen
        self._hub = hub
        self._store = store
        self._tokens = tokens
        self._grace = grace_s
        self._server: grpc.aio.Server | None = None
        self.port: int = 0

    async def start(self) -> None:
        server = grpc.aio.server(options=[
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a silently shared socket
            # Ping idle Watch streams: a watcher that vanished behind a NAT without a reset is then
            # noticed and its hub subscription dropped instead of kept for ever.
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
        ])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
            "Watch": grpc.unary_stream_rpc_method_handler(
                self._watch, request_deserializer=_lenient(alerts_pb2.WatchRequest),
                response_serializer=alerts_pb2.AlertEvent.SerializeToString),
            "GetAlert": grpc.unary_unary_rpc_method_handler(
                self._get_alert, request_deserializer=_lenient(alerts_pb2.GetAlertRequest),
                response_serializer=alerts_pb2.Alert.SerializeToString),
            "ListAlerts": grpc.unary_unary_rpc_method_handler(
                self._list_alerts, request_deserializer=_lenient(alerts_pb2.ListAlertsRequest),
                response_serializer=alerts_pb2.ListAlertsResponse.SerializeToString),
        }),))
        try:
            self.port = (server.add_secure_port(self._listen, self._credentials) if self._credentials is not None
                         else server.add_insecure_port(self._listen))
        except RuntimeError:  # grpc reports a failed bind this way
            self.port = 0
        if self.port == 0:
            raise OSError(f"alerts gRPC: cannot listen on {self._listen} (address in use or not local)")
        await server.start()
        self._server = server
        log.info("alert gRPC service listening on %s", self._listen.rsplit(":", 1)[0] + f":{self.port}")

    async def shutdown(self) -> None:
        """Stop; unary calls in flight get ``grace_s`` to finish, Watch streams are then cancelled
        (closing the hub first ends them cleanly). Safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(self._grace)

    # --- handlers -----------------------------------------------------------------------------

    async def _authorize(self, context: Context) -> None:
        if self._tokens is None:
            return
        token = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, rest = value.partition(" ")
                if scheme.lower() == "bearer":
                    token = rest.strip()
        role = self._tokens(token) if token else None
        if role is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing or unknown token: send metadata 'authorization: Bearer <token>'")
        if role not in READ_ROLES:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"role {role!r} may not read alerts")

    async def _decoded(self, req: Any, method: str, context: Context) -> None:
        """Authenticate, then refuse a request that did not decode (counted, one warning line)."""
        await self._authorize(context)
        if isinstance(req, _Undecodable):
            self._invalid.labels(method).inc()
            log.warning("AlertService/%s: request is not a valid %s (%s: %s)", method, req.message,
                        type(req.error).__name__, req.error)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid {req.message} message")

    async def _checked(self, req: alerts_pb2.WatchRequest | alerts_pb2.ListAlertsRequest,
                       context: Context, method: str) -> AlertQuery:
        await self._decoded(req, method, context)
        try:
            return _query(req)
        except ValueError as e:  # the message starts with the field's name
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    async def _watch(self, req: alerts_pb2.WatchRequest, context: Context) -> AsyncIterator[alerts_pb2.AlertEvent]:
        q = await self._checked(req, context, "Watch")
        sub = self._hub.subscribe(AlertFilter(severity=q.severity, service=q.service, model=q.model,
                                              anomaly_type=q.anomaly_type, status=q.status))
        try:
            async for event in sub:
                yield alerts_pb2.AlertEvent(event=event["event"], alert=alert_to_proto(event["alert"]),
                                            lagged=int(event.get("lagged", 0)))
        finally:  # the client cancelled, the hub closed or the server stopped
            sub.unsubscribe()

    async def _get_alert(self, req: alerts_pb2.GetAlertRequest, context: Context) -> alerts_pb2.Alert:
        await self._decoded(req, "GetAlert", context)
        if not req.alert_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "alert_id: required")
        try:
            alert = await asyncio.to_thread(self._store.get, req.alert_id)
        except StoreError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        if alert is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"alert {req.alert_id!r} not found")
        return alert_to_proto(alert.to_dict())

    async def _list_alerts(self, req: alerts_pb2.ListAlertsRequest, context: Context) -> alerts_pb2.ListAlertsResponse:
        q = await self._checked(req, context, "ListAlerts")
        try:
            alerts, total = await asyncio.to_thread(self._store.query, q)
        except StoreError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        return alerts_pb2.ListAlertsResponse(alerts=[alert_to_proto(a.to_dict()) for a in alerts], total=total)
