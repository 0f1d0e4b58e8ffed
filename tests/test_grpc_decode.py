"""Undecodable AlertService requests (issue 15, case 14): INVALID_ARGUMENT and one counted warning,
not UNKNOWN "Unexpected <class DecodeError>" with an ERROR traceback logged before authentication."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from prometheus_client import CollectorRegistry

from aggregator.alerting.grpc_service import SERVICE, AlertGrpcServer
from aggregator.alerting.hub import AlertHub
from aggregator.alerting.store import SQLiteAlertStore

GARBAGE = b"\xff\xff\xff\xff"  # a field tag with no end: not a protobuf message


@pytest.fixture
async def server(store: SQLiteAlertStore) -> AsyncIterator[tuple[AlertGrpcServer, CollectorRegistry]]:
    registry = CollectorRegistry()
    hub = AlertHub()
    hub.bind(asyncio.get_running_loop())
    srv = AlertGrpcServer("127.0.0.1:0", hub, store, lambda t: "viewer" if t == "v" else None, registry=registry)
    await srv.start()
    yield srv, registry
    hub.close()
    await srv.shutdown()


async def _call(port: int, method: str, token: str | None, stream: bool = False) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        path = f"/{SERVICE}/{method}"
        with pytest.raises(grpc.aio.AioRpcError) as e:
            if stream:
                async for _ in channel.unary_stream(path)(GARBAGE, metadata=metadata):
                    pass
            else:
                await channel.unary_unary(path)(GARBAGE, metadata=metadata)
        return e.value


@pytest.mark.parametrize(("method", "stream"), [("GetAlert", False), ("ListAlerts", False), ("Watch", True)])
async def test_undecodable_request_is_invalid_argument_and_one_warning(
        server: tuple[AlertGrpcServer, CollectorRegistry], method: str, stream: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    srv, registry = server
    with caplog.at_level(logging.INFO):
        e = await _call(srv.port, method, "v", stream)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.details().startswith("request is not a valid sentinel.v1.")
    assert registry.get_sample_value("sentinel_aggregator_grpc_invalid_requests_total", {"method": method}) == 1
    assert [r.levelname for r in caplog.records] == ["WARNING"]


async def test_garbage_without_a_token_is_unauthenticated_and_not_counted(
        server: tuple[AlertGrpcServer, CollectorRegistry]) -> None:
    srv, registry = server
    assert (await _call(srv.port, "GetAlert", None)).code() == grpc.StatusCode.UNAUTHENTICATED
    assert registry.get_sample_value("sentinel_aggregator_grpc_invalid_requests_total", {"method": "GetAlert"}) is None
