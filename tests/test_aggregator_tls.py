"""TLS on the aggregator's listeners and mTLS between sidecar and aggregator (for deployments
without Istio): rows flow only over verified connections, and only with a client certificate
when one is required; gRPC Watch over TLS with a client certificate."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
import trustme

from aggregator.app import Aggregator
from aggregator.config import AggregatorConfig
from loadtest.spans import build_trace_request
from sentinel.config import ConfigError
from sentinel.v1 import alerts_pb2, alerts_pb2_grpc
from tests.conftest import AggregatorFactory, SidecarFactory, wait_for

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class Pki:
    def __init__(self, tmp: Path) -> None:
        self.ca = trustme.CA()
        self.client_ca = trustme.CA()
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        client = self.client_ca.issue_cert("sidecar.example")
        self.ca_file = tmp / "ca.pem"
        self.client_ca_file = tmp / "client-ca.pem"
        self.cert, self.key = tmp / "server.pem", tmp / "server.key"
        self.client_cert, self.client_key = tmp / "client.pem", tmp / "client.key"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.client_ca.cert_pem.write_to_path(str(self.client_ca_file))
        server.private_key_pem.write_to_path(str(self.key))
        server.cert_chain_pems[0].write_to_path(str(self.cert))
        for pem in server.cert_chain_pems[1:]:
            pem.write_to_path(str(self.cert), append=True)
        client.private_key_pem.write_to_path(str(self.client_key))
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def rows_ingested(agg: Aggregator) -> float:
    return agg.metrics.registry.get_sample_value("sentinel_aggregator_rows_ingested_total") or 0.0


async def send(port: int, n: int = 50) -> None:
    request = build_trace_request(n, rng=random.Random(1))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await channel.unary_unary(EXPORT, None, None)(request.SerializeToString(), timeout=10)


async def test_https_ingest_with_a_verified_certificate(pki: Pki, make_aggregator: AggregatorFactory,
                                                        make_sidecar: SidecarFactory) -> None:
    agg = await make_aggregator(tls_cert_file=str(pki.cert), tls_key_file=str(pki.key), tokens=["t"])
    assert agg.url.startswith("https://")
    sc = await make_sidecar(aggregator_url=agg.url, ca_file=str(pki.ca_file), token="t")
    await send(sc.ports()["grpc"])
    await wait_for(lambda: rows_ingested(agg) == 50, what="rows over https")
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.HTTPError):  # plaintext to the TLS port
            await client.get(agg.url.replace("https://", "http://") + "/healthz")


async def test_mtls_needs_a_client_certificate(pki: Pki, make_aggregator: AggregatorFactory,
                                               make_sidecar: SidecarFactory) -> None:
    agg = await make_aggregator(tls_cert_file=str(pki.cert), tls_key_file=str(pki.key),
                                tls_client_ca_file=str(pki.client_ca_file), tokens=["t"])
    without = await make_sidecar(aggregator_url=agg.url, ca_file=str(pki.ca_file), token="t", sidecar_id="no-cert")
    await send(without.ports()["grpc"])
    await asyncio.sleep(1.0)
    assert rows_ingested(agg) == 0
    assert without.forwarder is not None and without.forwarder.last_error  # refused, kept, retried
    with_cert = await make_sidecar(aggregator_url=agg.url, ca_file=str(pki.ca_file), token="t", sidecar_id="cert",
                                   client_cert_file=str(pki.client_cert), client_key_file=str(pki.client_key))
    await send(with_cert.ports()["grpc"], 30)
    await wait_for(lambda: rows_ingested(agg) == 30, what="rows over mTLS")


async def test_grpc_watch_over_mtls(pki: Pki, make_aggregator: AggregatorFactory) -> None:
    agg = await make_aggregator(tls_cert_file=str(pki.cert), tls_key_file=str(pki.key),
                                tls_client_ca_file=str(pki.client_ca_file), viewer_tokens=["v"])
    assert agg.grpc is not None
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca_file.read_bytes(),
                                         private_key=pki.client_key.read_bytes(),
                                         certificate_chain=pki.client_cert.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{agg.grpc.port}", creds) as channel:
        stub = alerts_pb2_grpc.AlertServiceStub(channel)  # type: ignore[no-untyped-call]
        reply = await stub.ListAlerts(alerts_pb2.ListAlertsRequest(), metadata=(("authorization", "Bearer v"),),
                                      timeout=10)
        assert reply.total == 0
    plain = grpc.ssl_channel_credentials(root_certificates=pki.ca_file.read_bytes())  # no client certificate
    async with grpc.aio.secure_channel(f"127.0.0.1:{agg.grpc.port}", plain) as channel:
        stub = alerts_pb2_grpc.AlertServiceStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.ListAlerts(alerts_pb2.ListAlertsRequest(), metadata=(("authorization", "Bearer v"),),
                                  timeout=5)


@pytest.mark.parametrize(("settings", "key"), [
    ({"tls_cert_file": "x.pem"}, "tls_cert_file"),
    ({"tls_client_ca_file": "ca.pem"}, "tls_client_ca_file"),
    ({"tls_cert_file": "a", "tls_key_file": "b", "otlp_grpc_listen": "127.0.0.1:0"}, "tls_cert_file"),
])
def test_tls_settings_are_checked(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        AggregatorConfig(**settings).validate()


async def test_unreadable_certificate_fails_start_naming_the_setting(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    agg = Aggregator(AggregatorConfig(listen="127.0.0.1:0", grpc_listen="", data_dir=str(tmp_path / "d"),
                                      tls_cert_file=str(bad), tls_key_file=str(bad)), registry=CollectorRegistry())
    with pytest.raises(OSError, match="tls_cert_file"):
        await agg.start()
    await agg.shutdown()
