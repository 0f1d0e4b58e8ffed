"""The ``sentinel`` command: one entry point, a subcommand per component.

    sentinel sidecar [--config FILE] [--grpc-listen 127.0.0.1:4317] ...
    sentinel aggregator [--config FILE] [--listen 0.0.0.0:9090] [--data-dir ./data] ...
    sentinel webhook [--config FILE] [--listen 0.0.0.0:8443] [--tls-cert FILE --tls-key FILE] ...
    sentinel alerts [--follow] [--severity high,critical] [--service NAME] ...
    sentinel config show|history|diff FILE|apply FILE|rollback N
    sentinel demo [--seconds 40] [--keep-running]

Invalid settings stop start-up with exit status 2 and a message naming the setting.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from sentinel.config import ConfigError, add_arguments, load

__all__ = ["main"]


#: Loggers kept at WARNING whatever ``log_level`` says: httpx logs every request's full URL at INFO (a
#: webhook URL may hold a token, e.g. Slack's), and one line per forwarded batch besides.
QUIET_LOGGERS = ("httpx", "httpcore")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


#: Each long-running subcommand: (help, "module:settings class", module whose ``run(settings)`` runs it).
#: The settings' YAML section is the command's name. Both modules are imported only when the command is
#: chosen (all of them only for ``sentinel --help``): the aggregator's settings alone import its detectors,
#: alerting, API, JWT, RE2 and SQLite, the webhook's cryptography and kubernetes — ~60 MiB a sidecar
#: process would carry for nothing (``tests/test_sidecar_imports.py`` pins that it does not).
_SERVICES: dict[str, tuple[str, str, str]] = {
    "sidecar": ("run the sidecar (OTLP receiver, local detection, forwarder)", "sidecar.config:SidecarConfig",
                "sidecar.app"),
    "aggregator": ("run the aggregator (ingest, baselines, detectors, Isolation Forest, alerts, API, page)",
                   "aggregator.config:AggregatorConfig", "aggregator.app"),
    "webhook": ("run the mutating admission webhook that injects the sidecar",
                "webhook_injector.settings:InjectorSettings", "webhook_injector.server"),
}


def _settings_class(command: str) -> type:
    module, _, name = _SERVICES[command][1].partition(":")
    cls: type = getattr(importlib.import_module(module), name)
    return cls


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``command`` (a service named first on it), only that service's
    settings become options, so only its settings module is imported."""
    p = argparse.ArgumentParser(prog="sentinel", description="LLM-Sentinel: anomaly detection for LLM apps")
    sub = p.add_subparsers(dest="command", required=True)
    for name, (help_text, _, _) in _SERVICES.items():
        service = sub.add_parser(name, help=help_text)
        if command in (None, name):
            add_arguments(service, _settings_class(name))
    sub.add_parser("alerts", help="list the aggregator's alerts (--follow for live ones); "
                   "`sentinel alerts --help` for its options", add_help=False)
    sub.add_parser("config", help="the aggregator's live settings: show, history, diff FILE, apply FILE, "
                   "rollback N; `sentinel config --help`", add_help=False)
    demo = sub.add_parser("demo", help="run an aggregator, a sidecar and traffic with injected incidents; "
                          "print the alerts")
    demo.add_argument("--seconds", type=float, default=40.0, help="how long to generate traffic [40]")
    demo.add_argument("--rate", type=float, default=1000.0, help="spans per second [1000]")
    demo.add_argument("--listen", default="127.0.0.1:9090", help="the aggregator's API and page [127.0.0.1:9090]")
    demo.add_argument("--keep-running", action="store_true", help="keep the page up after the traffic, until Ctrl-C")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["alerts"]:  # a client, not a service: its own parser takes every option after it
        from sentinel.cli.alerts import main as alerts_main

        return alerts_main(argv[1:])
    if argv[:1] == ["config"]:  # the same: the aggregator's live settings through its API
        from sentinel.cli.config import main as config_main

        return config_main(argv[1:])
    args = _parser(argv[0] if argv[:1] and argv[0] in _SERVICES else None).parse_args(argv)
    if args.command == "demo":
        from sentinel.cli.demo import run_demo

        _setup_logging("warning")
        try:
            return asyncio.run(run_demo(seconds=args.seconds, rate=args.rate, listen=args.listen,
                                        keep_running=args.keep_running))
        except KeyboardInterrupt:
            return 130
    settings_cls, module = _settings_class(args.command), _SERVICES[args.command][2]
    try:
        settings: Any = load(settings_cls, args=args, section=args.command)
    except ConfigError as e:
        print(f"sentinel {args.command}: invalid setting {e}", file=sys.stderr)
        return 2
    _setup_logging(settings.log_level)
    run: Callable[[Any, Callable[[], Any]], Coroutine[Any, Any, int]] = importlib.import_module(module).run

    def reload_settings() -> Any:  # on SIGHUP: the same file, environment and flags, read again
        return load(settings_cls, args=args, section=args.command)

    return asyncio.run(run(settings, reload_settings))
