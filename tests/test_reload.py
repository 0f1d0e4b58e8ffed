"""Reloading settings (SIGHUP): live keys apply between batches, others are reported, bad ones refused."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest

from aggregator.config import AggregatorConfig
from sentinel.config import ConfigError, replace_keys
from sentinel.reload import SettingsReloader, changed_keys
from sidecar.config import SidecarConfig


def test_changed_keys_lists_the_fields_that_differ() -> None:
    old = SidecarConfig()
    new = dataclasses.replace(old, log_level="debug", batch_max_rows=old.batch_max_rows + 1)
    assert sorted(changed_keys(old, new)) == ["batch_max_rows", "log_level"]
    assert changed_keys(old, old) == []


def test_the_aggregators_live_keys_are_the_detection_sinks_and_token_settings() -> None:
    live = AggregatorConfig.live_keys()
    assert {"alerts.min_confidence", "alerts.min_confidence_by_type", "alerts.persistence", "confirm.quantile",
            "detectors", "forest", "webhooks", "amqp.url", "tokens", "admin_tokens", "jwt.issuer"} <= live
    assert not live & {"listen", "grpc_listen", "data_dir", "tls_cert_file", "baselines.metrics", "save_interval_s",
                       "feedback.min_precision"}


async def test_reloader_applies_live_keys_and_names_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    running = replace_keys(AggregatorConfig(), {"alerts.min_confidence": 0.5})
    on_disk = replace_keys(running, {"alerts.min_confidence": 0.9, "save_interval_s": 5.0, "log_level": "warning"})
    applied: list[tuple[float, list[str]]] = []

    async def apply(new: AggregatorConfig, keys: list[str]) -> None:
        applied.append((new.alerts.min_confidence, keys))

    reloader = SettingsReloader(running, lambda: on_disk, live_keys=AggregatorConfig.live_keys(), apply=apply)
    root = logging.getLogger()
    level = root.level
    try:
        with caplog.at_level(logging.INFO):
            assert await reloader.reload() == ["alerts.min_confidence", "log_level"]
        assert root.level == logging.WARNING
    finally:
        root.setLevel(level)
    assert applied == [(0.9, ["alerts.min_confidence"])]
    assert "restart needed for save_interval_s" in caplog.text
    # What runs: the applied keys changed, the restart-needed one kept (and reported again next time).
    assert reloader.current.alerts.min_confidence == 0.9
    assert reloader.current.save_interval_s == running.save_interval_s
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert await reloader.reload() == []
    assert "restart needed for save_interval_s" in caplog.text


async def test_an_invalid_reload_is_refused_whole(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> AggregatorConfig:
        raise ConfigError("alerts.min_confidence: must be between 0 and 1")

    applied: list[Any] = []

    async def apply(new: AggregatorConfig, keys: list[str]) -> None:
        applied.append(keys)

    running = AggregatorConfig()
    reloader = SettingsReloader(running, broken, live_keys=AggregatorConfig.live_keys(), apply=apply)
    with caplog.at_level(logging.ERROR):
        assert await reloader.reload() == []
    assert "reload refused: invalid setting alerts.min_confidence" in caplog.text
    assert applied == [] and reloader.current is running


async def test_an_apply_that_fails_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    running = AggregatorConfig()

    async def apply(new: AggregatorConfig, keys: list[str]) -> None:
        raise RuntimeError("a component broke")

    new = replace_keys(running, {"alerts.min_confidence": 0.7})
    reloader = SettingsReloader(running, lambda: new, live_keys=AggregatorConfig.live_keys(), apply=apply)
    with caplog.at_level(logging.ERROR):
        assert await reloader.reload() == []
    assert reloader.current is running
    assert "applying alerts.min_confidence failed" in caplog.text


async def test_the_aggregator_swaps_alerting_settings_between_batches(make_aggregator: Any, tmp_path: Path) -> None:
    agg = await make_aggregator(grpc_listen="")
    public_url = agg.alerts.config.public_url
    assert public_url  # derived from the listener at start, and kept by a reload
    new = replace_keys(agg.config, {"alerts.min_confidence": 0.95, "alerts.min_confidence_by_type": {"x": 0.99},
                                    "confirm.quantile": 0.995})
    await agg.apply_settings(new, ["alerts.min_confidence", "alerts.min_confidence_by_type", "confirm.quantile"])
    assert agg.alerts.config.min_confidence == 0.95
    assert agg.alerts.config.min_confidence_by_type == {"x": 0.99}
    assert agg.alerts.config.public_url == public_url
    assert agg.confirmer.config.quantile == 0.995
    assert agg.config.alerts.min_confidence == 0.95

    bad = replace_keys(agg.config, {"alerts.min_confidence": 2.0})
    with pytest.raises(ConfigError, match=r"alerts\.min_confidence"):
        await agg.apply_settings(bad, ["alerts.min_confidence"])
    assert agg.alerts.config.min_confidence == 0.95


async def test_a_reload_is_audited(make_aggregator: Any) -> None:
    agg = await make_aggregator(grpc_listen="")
    await agg.apply_settings(replace_keys(agg.config, {"alerts.min_confidence": 0.8}), ["alerts.min_confidence"])
    entries, total = agg.audit.query(action="config.version")
    assert total == 1 and entries[0].detail == {"keys": ["alerts.min_confidence"], "comment": ""}
    assert entries[0].who == "SIGHUP"
    (latest, start) = agg.versions.history()
    assert start.who == "startup" and latest.who == "SIGHUP"
    assert latest.diff == {"alerts.min_confidence": {"from": 0.5, "to": 0.8}}
