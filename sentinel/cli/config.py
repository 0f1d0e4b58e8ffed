"""``sentinel config``: the aggregator's live settings through its API (``/api/v1/config``, admin token).

    sentinel config show                      the running live settings and their version
    sentinel config history [--limit 20]      the versions: who, when, what changed
    sentinel config diff FILE                 what applying FILE would change
    sentinel config apply FILE [--comment C]  apply FILE's live settings (a new version, no restart)
    sentinel config rollback N [--comment C]  apply version N's settings again (a new version)

FILE is a settings file as ``sentinel aggregator --config`` reads it (its ``aggregator:`` section when it
has one); only its live keys (those ``GET /api/v1/config`` lists, dotted: ``alerts.*``, ``confirm.*``,
``jwt.*``, ``amqp.*``, the detectors, the forest, the webhooks, the tokens) are sent, the others are named
as needing a restart. Secrets (tokens, ``amqp.url``, ``webhooks``) are compared by digest, never printed.
``--url`` or ``SENTINEL_URL``; the token ``SENTINEL_API_TOKEN`` or ``--token-file``.
Exit status: 0 done, 1 the aggregator cannot be reached or refused, 2 a bad option, file or setting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from aggregator.config import SECRET_KEYS
from aggregator.config_versions import is_digest, redact
from sentinel.cli.alerts import DEFAULT_URL, CliError, _Api, _token, run_cli
from sentinel.config import ConfigError, resolve

__all__ = ["file_settings", "main"]

def file_settings(path: str, live_keys: Collection[str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """(live settings, other keys) of a settings file; ``live_keys``: the running aggregator's (default: this
    version's, :meth:`aggregator.config.AggregatorConfig.live_keys`)."""
    from aggregator.config import AggregatorConfig

    if live_keys is None:
        live_keys = AggregatorConfig.live_keys()
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise CliError(f"{path}: cannot read: {e.strerror}", 2) from None
    except yaml.YAMLError as e:
        raise CliError(f"{path}: not valid YAML: {e}", 2) from None
    if isinstance(data, dict) and isinstance(data.get("aggregator"), dict):
        data = data["aggregator"]
    if not isinstance(data, dict):
        raise CliError(f"{path}: must hold a map of settings", 2)
    try:  # the keys dotted (alerts.min_confidence), as the API shows them; deprecated flat ones mapped
        data = resolve(AggregatorConfig, data, where=f"in {path}")
    except ConfigError as e:
        raise CliError(str(e), 2) from None
    live = {k: v for k, v in data.items() if k in live_keys}
    return live, sorted(str(k) for k in data if k not in live)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sentinel config", description="the aggregator's live settings",
                                epilog="Token: SENTINEL_API_TOKEN or --token-file (admin).")
    p.add_argument("--url", default=os.environ.get("SENTINEL_URL") or DEFAULT_URL,
                   help=f"the aggregator's URL (env SENTINEL_URL) [{DEFAULT_URL}]")
    p.add_argument("--token-file", metavar="FILE", help="read the API token from FILE (else env SENTINEL_API_TOKEN)")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("show", help="the running live settings and their version")
    h = sub.add_parser("history", help="the versions, newest first")
    h.add_argument("--limit", type=int, default=20)
    d = sub.add_parser("diff", help="what applying FILE would change")
    d.add_argument("file")
    a = sub.add_parser("apply", help="apply FILE's live settings")
    a.add_argument("file")
    a.add_argument("--comment", default="")
    r = sub.add_parser("rollback", help="apply version N's settings again")
    r.add_argument("version", type=int)
    r.add_argument("--comment", default="")
    return p


def _call(api: _Api, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
    try:
        r = api.client.request(method, path, json=body, params=params)
    except httpx.TransportError as e:
        raise api.unreachable(e) from None
    api._check(r)
    return r.json()


def _shown(key: str, value: Any) -> Any:
    """What may be printed of a setting: a secret's digest (as the aggregator shows it), anything else as it is."""
    return value if key not in SECRET_KEYS or is_digest(value) else redact(value)


def _print_diff(changes: dict[str, Any]) -> None:
    if not changes:
        print("no change")
    for key, d in sorted(changes.items()):
        print(f"{key}: {json.dumps(_shown(key, d['from']))} -> {json.dumps(_shown(key, d['to']))}")


def _run(args: argparse.Namespace) -> int:
    url = str(args.url).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise CliError(f"--url: {args.url!r} must start with http:// or https://", 2)
    api = _Api(url, _token(args))
    try:
        if args.action == "show":
            print(json.dumps(_call(api, "GET", "/api/v1/config"), indent=2, sort_keys=True))
        elif args.action == "history":
            for v in _call(api, "GET", "/api/v1/config/history", params={"limit": args.limit})["versions"]:
                keys = ", ".join(sorted(v["diff"])) or "-"
                note = f"  # {v['comment']}" if v["comment"] else ""
                print(f"{v['version']:>5}  {v['at']}  {v['who']:<12} {keys}{note}")
        elif args.action == "diff":
            running = _call(api, "GET", "/api/v1/config")["settings"]
            live, others = file_settings(args.file, set(running))
            _print_diff({k: {"from": running.get(k), "to": v} for k, v in live.items()
                         if running.get(k) != _shown(k, v)})
            for key in others:
                print(f"{key}: not live (restart needed to change it)", file=sys.stderr)
        elif args.action == "apply":
            live, others = file_settings(args.file, set(_call(api, "GET", "/api/v1/config")["settings"]))
            for key in others:
                print(f"{key}: not applied (restart needed for {key})", file=sys.stderr)
            if not live:
                raise CliError(f"{args.file}: no live settings to apply", 2)
            doc = _call(api, "PUT", "/api/v1/config", {"settings": live, "comment": args.comment})
            _print_diff(doc["diff"])
            print(f"version {doc['version']}")
        else:
            doc = _call(api, "POST", "/api/v1/config/rollback", {"version": args.version, "comment": args.comment})
            _print_diff(doc["diff"])
            print(f"version {doc['version']}")
        return 0
    finally:
        api.client.close()


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("config", _parser(), _run, argv)
