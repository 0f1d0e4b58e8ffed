"""With no token of any kind the aggregator listens on loopback only, and says so."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import AggregatorFactory


async def test_no_tokens_binds_loopback_and_warns(make_aggregator: AggregatorFactory,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="aggregator.app"):
        agg = await make_aggregator(listen="0.0.0.0:0", grpc_listen="0.0.0.0:0")
    assert agg._runner is not None
    assert {addr[0] for addr in agg._runner.addresses} == {"127.0.0.1"}
    assert "listening on 127.0.0.1 only" in caplog.text


async def test_tokens_keep_the_configured_address(make_aggregator: AggregatorFactory) -> None:
    agg = await make_aggregator(listen="0.0.0.0:0", grpc_listen="127.0.0.1:0", viewer_tokens=["v"])
    assert agg._runner is not None
    assert {addr[0] for addr in agg._runner.addresses} == {"0.0.0.0"}


async def test_allow_unauthenticated_keeps_the_configured_address(make_aggregator: AggregatorFactory,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="aggregator.app"):
        agg = await make_aggregator(listen="0.0.0.0:0", grpc_listen="127.0.0.1:0", allow_unauthenticated=True)
    assert agg._runner is not None
    assert {addr[0] for addr in agg._runner.addresses} == {"0.0.0.0"}
    assert "allow_unauthenticated" in caplog.text
