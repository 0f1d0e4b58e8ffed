"""The aggregator's HTTP API fuzzed from its own OpenAPI document with schemathesis.

One real aggregator (tokens of every kind configured, some alerts, silences and traffic in it) runs
in a background thread for the module. Every documented operation gets generated requests, valid
and invalid (schemathesis' examples, coverage and fuzzing phases), sent with a token that may call
it; each answer must be no 5xx, carry a documented status code and Content-Type, conform to the
documented response schema, and (``ignored_auth``) the operation must refuse the same request
without a token. Deterministic: hypothesis is derandomized, so a run is the same run every time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from prometheus_client import CollectorRegistry

from aggregator.api.openapi import load_openapi
from aggregator.app import Aggregator
from aggregator.config import AggregatorConfig
from sentinel import wire
from sentinel.model import FeatureBatch
from tests.test_api_support import ADMIN, INGEST, OPERATOR, VIEWER, batch, make_alert, traffic

#: The stream never ends by itself: it is fuzzed on its own below, reading only the answer's head.
STREAM = "/api/v1/stream"

schema = schemathesis.openapi.from_dict(load_openapi())
schema.config.generation.update(
    max_examples=30,           # per operation and phase: the module stays well under a minute
    deterministic=True,
    with_security_parameters=False,  # the token is ours (below), not a generated one
    database="none",           # no example database: the same examples on every machine
)
schema.config.checks.update(included_check_names=[
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_headers_conformance", "response_schema_conformance", "ignored_auth",
])


# POST /v1/ingest takes msgpack bytes: send what is generated for it as raw bytes, like octet-stream.
schemathesis.serializer.alias("application/x-msgpack", "application/octet-stream")


class _Server:
    """An aggregator on a loop of its own thread, so schemathesis' synchronous client can call it."""

    def __init__(self, data_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-aggregator", daemon=True)
        self.thread.start()
        config = AggregatorConfig(listen="127.0.0.1:0", grpc_listen="", data_dir=str(data_dir),
                                  tokens=[INGEST], viewer_tokens=[VIEWER], operator_tokens=[OPERATOR],
                                  admin_tokens=[ADMIN], shutdown_grace_s=1.0)
        self.agg = Aggregator(config, registry=CollectorRegistry())
        self.run(self.agg.start())

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def stop(self) -> None:
        try:
            self.run(self.agg.shutdown())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


def _seed(url: str, server: _Server) -> None:
    """Traffic of two services (health, series, baselines), alerts in every status, a silence."""
    now = time.time_ns()
    rows = traffic("chat", now - 600 * 1_000_000_000, 120, every_s=5.0) + traffic("search", now - 300 * 10**9, 60)
    b = batch(rows, sidecar="seed", seq=1).batch
    body = wire.encode(b, sidecar="seed", seq=1)
    with httpx.Client(base_url=url, timeout=10) as c:
        r = c.post("/v1/ingest", content=body,
                   headers={"Authorization": f"Bearer {INGEST}", "Content-Type": wire.CONTENT_TYPE})
        assert r.status_code == 200, r.text
        insert_alerts = [make_alert(status=s, severity=sev, service=svc)
                         for s, sev, svc in (("open", "critical", "chat"), ("acknowledged", "high", "search"),
                                             ("resolved", "low", None))]
        for alert in insert_alerts:
            server.agg.alert_store.insert(alert, [])
        r = c.post("/api/v1/silences", json={"matchers": [{"name": "service_name", "value": "chat"}],
                                             "duration": 3600, "comment": "seed"},
                   headers={"Authorization": f"Bearer {OPERATOR}"})
        assert r.status_code == 201, r.text


@pytest.fixture(scope="module")
def aggregator_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = _Server(tmp_path_factory.mktemp("fuzz-api"))
    try:
        _seed(server.agg.url, server)
        yield server.agg.url
    finally:
        server.stop()


#: "METHOD path" -> the status codes the fuzzing got back (checked at the end: it reached the handlers).
SEEN: dict[str, set[int]] = {}


def _token_for(path: str) -> str:
    return INGEST if path == "/v1/ingest" else ADMIN


@schema.exclude(path=STREAM).parametrize()
@settings(deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_every_operation_answers_as_documented(case: Any, aggregator_url: str) -> None:
    response = case.call_and_validate(base_url=aggregator_url, timeout=10,
                                      headers={"Authorization": f"Bearer {_token_for(case.path)}"})
    if case.method.upper() == case.operation.method.upper():  # not one of the undocumented methods tried
        SEEN.setdefault(f"{case.operation.method.upper()} {case.path}", set()).add(response.status_code)


@schema.include(path=STREAM).parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
def test_stream_filters_answer_200_or_400_and_other_methods_405(case: Any, aggregator_url: str) -> None:
    # Only the status line and headers: a 200 stream stays open until the aggregator shuts down.
    kwargs = case.as_transport_kwargs(base_url=aggregator_url, headers={"Authorization": f"Bearer {VIEWER}"})
    with httpx.Client(timeout=10) as c, c.stream(kwargs["method"], kwargs["url"], params=kwargs.get("params"),
                                                 headers=kwargs.get("headers")) as r:
        if kwargs["method"] != "GET":  # schemathesis also tries undocumented methods
            assert r.status_code == 405, (kwargs["method"], r.status_code)
            return
        assert r.status_code in (200, 400), r.status_code
        if r.status_code == 200:
            assert r.headers["Content-Type"].startswith("text/event-stream")
        else:
            r.read()
            body = r.json()
            assert body["status"] == "error" and isinstance(body["error"], str)


def test_the_served_document_is_the_fuzzed_one(aggregator_url: str) -> None:
    with httpx.Client(base_url=aggregator_url, timeout=10) as c:
        assert c.get("/api/v1/openapi.json").json() == load_openapi()


def test_empty_wire_batch_is_still_accepted(aggregator_url: str) -> None:
    # After the fuzzing above, the aggregator still ingests (nothing it was sent broke it).
    body = wire.encode(FeatureBatch.empty(), sidecar="after-fuzz", seq=1)
    with httpx.Client(base_url=aggregator_url, timeout=10) as c:
        r = c.post("/v1/ingest", content=body,
                   headers={"Authorization": f"Bearer {INGEST}", "Content-Type": wire.CONTENT_TYPE})
    assert r.status_code == 200 and r.json()["status"] == "accepted"


#: Operations no fuzzed request can succeed at: ingest's random bytes (400); the WebSocket, which a
#: plain GET cannot open (400; the upgrade is tested in tests/test_api_plan_names.py); and the live
#: configuration's changes, which need a real setting name or version (tests/test_config_api.py); and
#: the cluster's state, 404 for this single process (tests/test_cluster.py serves it).
NO_PLAIN_SUCCESS = frozenset({"POST /v1/ingest", "GET /ws/realtime", "PUT /api/v1/config",
                              "POST /api/v1/config/rollback", "GET /api/v1/cluster"})


def test_the_fuzzing_reached_the_handlers() -> None:
    # Not only 401s and 400s: with the right token, every operation answered a success at least once
    # (except those whose input is made up: path ids, mostly 404, and ingest's random bytes, 400).
    if not SEEN:
        pytest.skip("the fuzzing tests did not run (deselected)")
    expected_ok = {op: ("201" if op == "POST /api/v1/silences" else "2")
                   for op in SEEN if "{" not in op and op not in NO_PLAIN_SUCCESS}
    missing = {op: sorted(SEEN[op]) for op, prefix in expected_ok.items()
               if not any(str(code).startswith(prefix) for code in SEEN[op])}
    assert missing == {}
    assert all(401 not in codes for codes in SEEN.values()), SEEN
