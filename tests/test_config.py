"""Settings: precedence, parsing, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sentinel.config import ConfigError, load, parse_duration, parse_size
from sidecar.config import SidecarConfig


@pytest.mark.parametrize(("raw", "expected"), [
    (4194304, 4194304), ("4MiB", 4 * 1024**2), ("512KiB", 512 * 1024), ("20MB", 20_000_000), ("1GiB", 1024**3),
])
def test_parse_size(raw: object, expected: int) -> None:
    assert parse_size(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [(5, 5.0), ("250ms", 0.25), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0)])
def test_parse_duration(raw: object, expected: float) -> None:
    assert parse_duration(raw) == expected


def test_precedence_defaults_yaml_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "sentinel.yaml"
    cfg.write_text("sidecar:\n  batch_max_rows: 100\n  queue_max_batches: 7\n  spool: {max_bytes: 16MiB}\n"
                   "  detection:\n    warmup: 5\n")
    env = {"SENTINEL_QUEUE_MAX_BATCHES": "9", "SENTINEL_BATCH_TIMEOUT_S": "250ms"}
    c = load(SidecarConfig, args={"config": str(cfg), "batch_max_rows": "300"}, env=env, section="sidecar")
    assert c.batch_max_rows == 300          # flag beats YAML
    assert c.queue_max_batches == 9         # env beats YAML
    assert c.spool.max_bytes == 16 * 1024 * 1024  # YAML beats default
    assert c.batch_timeout_s == 0.25
    assert c.detection == {"warmup": 5}
    assert c.grpc_listen == "127.0.0.1:4317"


@pytest.mark.parametrize(("settings", "key"), [
    ({"mode": "edge"}, "mode"),
    ({"grpc_listen": "nowhere"}, "grpc_listen"),
    ({"batch_max_rows": "0"}, "batch_max_rows"),
    ({"batch_max_rows": "many"}, "batch_max_rows"),
    ({"spool.max_bytes": "lots"}, "spool.max_bytes"),
    ({"mode": "store-and-forward", "aggregator_url": "http://a:9090"}, "spool.directory"),
    ({"mode": "store-and-forward", "spool.directory": "/tmp/x"}, "aggregator_url"),
    ({"aggregator_url": "ftp://x"}, "aggregator_url"),
    ({"spool.full_policy": "panic"}, "spool.full_policy"),
    ({"spool.fsync": "sometimes"}, "spool.fsync"),
    ({"spool.segment_bytes": "2MiB", "spool.max_bytes": "1MiB"}, "spool.segment_bytes"),
    ({"upstream.protocol": "thrift"}, "upstream.protocol"),
    ({"capture_user": "maybe"}, "capture_user"),
])
def test_invalid_settings_name_the_key(settings: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(SidecarConfig, args=settings, env={})
    assert str(e.value).startswith(key)


def test_unknown_yaml_key_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("grpc_lisen: 127.0.0.1:4317\n")
    with pytest.raises(ConfigError, match="grpc_lisen: unknown setting"):
        load(SidecarConfig, args={"config": str(cfg)}, env={})


def test_env_names_its_variable() -> None:
    with pytest.raises(ConfigError, match="SENTINEL_BATCH_MAX_ROWS"):
        load(SidecarConfig, env={"SENTINEL_BATCH_MAX_ROWS": "x"})


def test_cli_refuses_invalid_setting_with_exit_2() -> None:
    r = subprocess.run([sys.executable, "-m", "sentinel.cli", "sidecar", "--mode", "edge"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "invalid setting mode" in r.stderr


def test_every_setting_is_documented_in_the_readme() -> None:
    from sentinel.config import leaves

    readme = (Path(__file__).resolve().parents[1] / "sidecar" / "README.md").read_text()
    missing = [leaf.key for leaf in leaves(SidecarConfig) if f"`{leaf.key}`" not in readme]
    assert missing == []


def test_bare_boolean_flag_means_true() -> None:
    import argparse

    from sentinel.config import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser, SidecarConfig)
    assert load(SidecarConfig, args=parser.parse_args(["--hash-user"]), env={}).hash_user is True
    assert load(SidecarConfig, args=parser.parse_args(["--hash-user", "false"]), env={}).hash_user is False
    assert load(SidecarConfig, args=parser.parse_args([]), env={}).hash_user is False
