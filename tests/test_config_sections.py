"""The loader's sections: a component's config dataclass nested in the process settings.

YAML gives a section as a map, the environment as ``SENTINEL_<SECTION>_<FIELD>``, flags as
``--<section>-<field>``; the old flat spellings are deprecated aliases (one warning per key, both
forms at once refused naming both), and every error names the full dotted key.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sentinel import config as config_mod
from sentinel.config import (
    ConfigError,
    add_arguments,
    deprecated_table,
    leaves,
    load,
    replace_keys,
    section,
    setting,
    settings_table,
)
from sentinel.reload import changed_keys


@dataclass
class Alerts:
    group_wait_s: float = setting(10.0, "wait")
    fold_into: dict[str, Any] = setting(None, "fold", flag=False, factory=dict)
    max_bytes: int = setting(1024, "size")
    derived: str = setting("", "set by the process", config=False)

    def validate(self) -> None:
        if self.group_wait_s < 0:
            raise ConfigError("alerts.group_wait_s: must not be negative")


@dataclass
class Amqp:
    url: str = setting("", "broker")
    exchange: str = setting("incidents", "exchange")


@dataclass
class Process:
    store_url: str = setting("", "store", flag=False)
    retry_after_s: int = setting(1, "retry")
    alerts: Alerts = section(Alerts, "alerts", old_prefix="alert_")
    amqp: Amqp = section(Amqp, "amqp", old_prefix="amqp_")

    def validate(self) -> None:
        self.alerts.validate()


@pytest.fixture(autouse=True)
def _fresh_warnings() -> Iterator[None]:
    config_mod._warned.clear()
    yield
    config_mod._warned.clear()


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    return path


def test_nested_yaml_env_and_flags_fill_a_section(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "store_url: postgresql://x\nalerts:\n  group_wait_s: 5m\n  fold_into: {a: [b]}\n")
    c = load(Process, config_file=path, env={"SENTINEL_AMQP_URL": "amqp://h", "SENTINEL_ALERTS_MAX_BYTES": "64MiB"})
    assert (c.store_url, c.alerts.group_wait_s, c.alerts.fold_into) == ("postgresql://x", 300.0, {"a": ["b"]})
    assert c.amqp.url == "amqp://h" and c.alerts.max_bytes == 64 * 1024 * 1024
    parser = argparse.ArgumentParser()
    add_arguments(parser, Process)
    args = parser.parse_args(["--alerts-group-wait-s", "1.5h", "--amqp-exchange", "x"])
    c = load(Process, args=args, env={})
    assert c.alerts.group_wait_s == 5400.0 and c.amqp.exchange == "x"


@pytest.mark.parametrize("raw,seconds", [("5m", 300.0), ("300", 300.0), (300, 300.0), ("1.5h", 5400.0),
                                         ("250ms", 0.25)])
def test_durations_one_rule(raw: Any, seconds: float) -> None:
    assert load(Process, data={"alerts": {"group_wait_s": raw}}, env={}).alerts.group_wait_s == seconds


def test_an_int_duration_takes_whole_seconds() -> None:
    assert load(Process, data={"retry_after_s": "2m"}, env={}).retry_after_s == 120
    with pytest.raises(ConfigError, match=r"^retry_after_s: not an integer"):
        load(Process, data={"retry_after_s": "1.5s"}, env={})


@pytest.mark.parametrize("data,env,message", [
    ({"alerts": {"group_wait_s": "soon"}}, {}, r"^alerts\.group_wait_s: not a duration"),
    ({"alerts": {"nope": 1}}, {}, r"^alerts\.nope: unknown setting"),
    ({"alerts": {"derived": "x"}}, {}, r"^alerts\.derived: unknown setting"),
    ({"alerts": 5}, {}, r"^alerts: must be a map"),
    ({}, {"SENTINEL_ALERTS_MAX_BYTES": "lots"}, r"^alerts\.max_bytes \(from SENTINEL_ALERTS_MAX_BYTES\): not a size"),
    ({"alerts": {"group_wait_s": -1}}, {}, r"^alerts\.group_wait_s: must not be negative"),
])
def test_errors_name_the_full_key(data: dict[str, Any], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(Process, data=data, env=env)


def test_flat_aliases_warn_once_per_key(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.WARNING, "sentinel.config")
    path = _yaml(tmp_path, "alert_group_wait_s: 2s\namqp_url: amqp://h\n")
    for _ in range(3):
        c = load(Process, config_file=path, env={"SENTINEL_ALERT_FOLD_INTO": "{x: [y]}"},
                 args={"alert_max_bytes": "1KiB"})
        assert (c.alerts.group_wait_s, c.amqp.url, c.alerts.fold_into, c.alerts.max_bytes) == (
            2.0, "amqp://h", {"x": ["y"]}, 1024)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 4, warnings
    assert any("alert_group_wait_s is deprecated: use alerts.group_wait_s" in w for w in warnings)
    assert any("SENTINEL_ALERT_FOLD_INTO is deprecated: use SENTINEL_ALERTS_FOLD_INTO" in w for w in warnings)
    assert any("--alert-max-bytes is deprecated: use --alerts-max-bytes" in w for w in warnings)


def test_an_unchanged_spelling_is_not_deprecated(caplog: pytest.LogCaptureFixture) -> None:
    # amqp_ -> amqp.: SENTINEL_AMQP_URL and --amqp-url are the new spellings as well as the old ones.
    caplog.set_level(logging.WARNING, "sentinel.config")
    parser = argparse.ArgumentParser()
    add_arguments(parser, Process)
    c = load(Process, args=parser.parse_args(["--amqp-exchange", "e"]), env={"SENTINEL_AMQP_URL": "amqp://h"})
    assert (c.amqp.url, c.amqp.exchange) == ("amqp://h", "e") and not caplog.records


@pytest.mark.parametrize("data,env,args,both", [
    ({"alert_group_wait_s": 1, "alerts": {"group_wait_s": 2}}, {}, {}, ("alert_group_wait_s", "alerts.group_wait_s")),
    ({}, {"SENTINEL_ALERT_GROUP_WAIT_S": "1", "SENTINEL_ALERTS_GROUP_WAIT_S": "2"}, {},
     ("SENTINEL_ALERT_GROUP_WAIT_S", "SENTINEL_ALERTS_GROUP_WAIT_S")),
    ({}, {}, {"alert_group_wait_s": "1", "alerts.group_wait_s": "2"},
     ("--alert-group-wait-s", "--alerts-group-wait-s")),
])
def test_flat_and_nested_at_once_is_refused_naming_both(data: dict[str, Any], env: dict[str, str],
                                                        args: dict[str, str], both: tuple[str, str]) -> None:
    with pytest.raises(ConfigError) as e:
        load(Process, data=data, env=env, args=args)
    assert str(e.value).startswith("alerts.group_wait_s: given twice")
    assert all(name in str(e.value) for name in both), str(e.value)


def test_precedence_file_env_flags() -> None:
    c = load(Process, data={"alerts": {"group_wait_s": 1}}, env={"SENTINEL_ALERTS_GROUP_WAIT_S": "2"},
             args={"alerts.group_wait_s": "3"})
    assert c.alerts.group_wait_s == 3.0


def test_base_is_the_start_of_a_partial_change() -> None:
    running = load(Process, data={"alerts": {"group_wait_s": 7, "max_bytes": 10}, "amqp": {"url": "amqp://h"}}, env={})
    changed = load(Process, data={"alerts": {"group_wait_s": 8}}, env={}, base=running)
    assert (changed.alerts.group_wait_s, changed.alerts.max_bytes, changed.amqp.url) == (8.0, 10, "amqp://h")
    assert running.alerts.group_wait_s == 7.0  # the base is not changed in place
    assert changed_keys(running, changed) == ["alerts.group_wait_s"]
    assert replace_keys(running, {"amqp.exchange": "x"}).amqp.exchange == "x"
    # A dotted key, as GET /api/v1/config shows them, is the same setting.
    assert load(Process, data={"alerts.group_wait_s": "1m"}, env={}, base=running).alerts.group_wait_s == 60.0


def test_validate_false_only_converts() -> None:
    assert load(Process, data={"alerts": {"group_wait_s": -5}}, env={}, validate=False).alerts.group_wait_s == -5.0


def test_tables_show_dotted_keys_and_the_deprecated_ones() -> None:
    table = settings_table(Process)
    assert "| `alerts.group_wait_s` | `--alerts-group-wait-s` | `SENTINEL_ALERTS_GROUP_WAIT_S` |" in table
    assert "derived" not in table and "`alerts`" not in table
    old = deprecated_table(Process)
    assert ("| `alert_group_wait_s` | `alerts.group_wait_s` | `SENTINEL_ALERT_GROUP_WAIT_S` | "
            "`--alert-group-wait-s` |") in old
    assert "| `amqp_url` | `amqp.url` | (unchanged) | (unchanged) |" in old
    assert [leaf.key for leaf in leaves(Process)][:3] == ["store_url", "retry_after_s", "alerts.group_wait_s"]


def test_a_setting_that_became_a_section_keeps_its_scalar_form(caplog: pytest.LogCaptureFixture) -> None:
    # genai_metrics: false (a flat boolean before) -> genai_metrics.enabled; local_alerts: always -> .mode.
    from sidecar.config import SidecarConfig

    caplog.set_level(logging.WARNING, "sentinel.config")
    c = load(SidecarConfig, data={"genai_metrics": False, "local_alerts": "always",
                                  "local_alert_slack_url": "https://hooks.example/x"}, env={})
    assert (c.genai_metrics.enabled, c.local_alerts.mode, c.local_alerts.slack_url) == (
        False, "always", "https://hooks.example/x")
    assert any("genai_metrics is deprecated: use genai_metrics.enabled" in r.getMessage() for r in caplog.records)
    c = load(SidecarConfig, data={"genai_metrics": {"span_window_s": "5m"}, "forward": "summaries",
                                  "summaries": {"flush_s": "2s"}}, env={"SENTINEL_LOCAL_ALERTS_MODE": "off"})
    assert (c.genai_metrics.enabled, c.genai_metrics.span_window_s, c.local_alerts.mode) == (True, 300.0, "off")
    assert (c.summaries.forward, c.summaries.flush_s) == ("summaries", 2.0)  # forward: the top-level setting
    with pytest.raises(ConfigError, match=r"^local_alerts\.mode: given twice"):
        load(SidecarConfig, data={"local_alerts": {"mode": "off"}}, env={"SENTINEL_LOCAL_ALERTS": "always",
                                                                         "SENTINEL_LOCAL_ALERTS_MODE": "off"})
