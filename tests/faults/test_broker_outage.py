"""Fault 7: RabbitMQ unreachable, then its connection cut, while alerts are raised — with real
processes: a sidecar forwarding error bursts of several services to an aggregator whose
``amqp.url`` goes through a killable TCP proxy to the real broker. The aggregator is also
SIGKILLed while alerts wait in its outbox.

aggregator/alerting/SINKS.md, "Delivery guarantees": a row leaves the outbox only once the broker
confirmed the message; while the broker is away alerts wait in the outbox (on disk, across
restarts); when it is back everything pending is published. At-least-once across failures
(consumers de-duplicate on ``message_id`` = ``alert_id``). (tests/test_alerting_outage.py is the
in-process version with synthetic candidates.)
"""

from __future__ import annotations

import time

from loadtest.spans import DEFAULT_MODELS
from tests.faults.conftest import AggregatorProc, Exporter, FaultEnv, S, observe, wait_until

BURST_SPANS = 40


def _bursts(ex: Exporter, services: list[str], burst_at_ns: int, closer_at_ns: int) -> None:
    """An error burst (60 % errors, one model: the detector keys on (service, model) and needs
    ``min_calls`` 20) for each service in one event-time minute, then a little normal
    traffic of another service past that minute plus the detector's lateness, which closes it."""
    for i, svc in enumerate(services):
        calls = ex.send(1, n_spans=BURST_SPANS, services=[svc], models=DEFAULT_MODELS[:1], error_rate=0.6,
                        start_unix_nano=burst_at_ns + i * S)
        assert calls[0].code == "OK"
    assert ex.send(1, n_spans=10, services=["closer"], error_rate=0.0, start_unix_nano=closer_at_ns)[0].code == "OK"


def _outbox(agg: AggregatorProc) -> float:
    return agg.metrics()("sentinel_aggregator_sink_outbox_depth", sink="amqp")


def test_alerts_raised_while_broker_is_away_all_reach_it(faults: FaultEnv) -> None:
    queue = faults.amqp_queue()
    proxy = faults.proxy(5672, start=False)  # the broker is unreachable: nothing listens on the proxy's port
    # One alert per burst service: the bursts share a provider, which alerts.group_across would make one
    # provider-wide alert; this test counts alerts through the outages, so it groups per service.
    agg = faults.aggregator(extra=["--amqp-url", f"amqp://guest:guest@127.0.0.1:{proxy.port}/",
                                   "--amqp-exchange", queue.exchange, "--amqp-queue", queue.sink_queue],
                            config={"alerts": {"group_across": {}}}).start()
    sc = faults.sidecar("pod-alerts", aggregator_url=agg.url).start()
    ex = faults.exporter(sc)
    # Event time: four consecutive minutes ending ~1 min ago (not late: late_after_s is 5 min).
    minute = (time.time_ns() // S - 240) // 60 * 60 * S
    round1 = [f"burst-a{i}" for i in range(3)]
    round2 = [f"burst-b{i}" for i in range(3)]

    # 1. Broker unreachable: alerts are raised and wait in the outbox.
    _bursts(ex, round1, minute + 5 * S, minute + 75 * S)
    wait_until(lambda: _outbox(agg) >= len(round1), 30, "round-1 alerts in the outbox")
    time.sleep(1)
    assert queue.bodies == []
    # 2. The aggregator is SIGKILLed with alerts in its outbox, and restarted (broker still away).
    outbox_before_kill = _outbox(agg)
    agg.kill()
    agg.start()
    assert _outbox(agg) == outbox_before_kill, "the outbox survives SIGKILL"
    # 3. The broker comes back: everything pending is published.
    faults.proxy_up(proxy)
    t0 = time.monotonic()
    wait_until(lambda: _outbox(agg) == 0, 60, "the outbox to empty after the broker is back")
    first_drain_s = time.monotonic() - t0
    # 4. The connection is cut while more alerts are raised; then the broker is back again.
    faults.proxy_down(proxy)
    _bursts(ex, round2, minute + 125 * S, minute + 195 * S)
    wait_until(lambda: _outbox(agg) >= 1, 30, "round-2 alerts in the outbox")
    time.sleep(1)
    faults.proxy_up(proxy)
    t0 = time.monotonic()
    wait_until(lambda: _outbox(agg) == 0, 60, "the outbox to empty after the connection is back")
    second_drain_s = time.monotonic() - t0

    alerts = agg.alerts()
    to_send = {a["alert_id"] for a in alerts if not a.get("storm_id") and not a.get("silenced_by")}
    wait_until(lambda: set(queue.alert_ids()) >= to_send, 20, "every alert on the queue")
    time.sleep(0.5)
    got = queue.alert_ids()
    m = agg.metrics()
    failures = m("sentinel_aggregator_sink_failures_total", sink="amqp")
    assert sc.term() == 0
    assert agg.term() == 0

    bursts = {a["service_name"] for a in alerts if a["anomaly_type"] == "error_burst"}
    assert bursts >= set(round1 + round2), f"an error_burst alert per burst service: {bursts}"
    assert set(got) == to_send, f"missing {to_send - set(got)}, unexpected {set(got) - to_send}"
    redelivered = sum(c - 1 for c in got.values())
    assert redelivered <= 2 * 100, "at most one batch (batch_size) repeated per failure"
    observe("7 RabbitMQ unreachable + aggregator SIGKILL + connection cut", alerts_raised=len(alerts),
            alerts_to_send=len(to_send), reached_broker=len(got), lost=len(to_send - set(got)),
            redelivered=redelivered, outbox_at_kill=int(outbox_before_kill),
            drain_after_broker_back_s=round(first_drain_s, 1), drain_after_reconnect_s=round(second_drain_s, 1),
            sink_failures_after_restart=int(failures), types=sorted({a["anomaly_type"] for a in alerts}))
