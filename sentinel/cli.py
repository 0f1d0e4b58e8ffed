"""The ``sentinel`` command: one entry point, a subcommand per component.

    sentinel sidecar [--config FILE] [--grpc-listen 127.0.0.1:4317] ...
    sentinel aggregator [--config FILE] [--listen 0.0.0.0:9090] [--data-dir ./data] ...
    sentinel webhook [--config FILE] [--listen 0.0.0.0:8443] [--tls-cert FILE --tls-key FILE] ...
    sentinel demo [--seconds 20]

Invalid settings stop start-up with exit status 2 and a message naming the setting.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from sentinel.config import ConfigError, add_arguments, load

__all__ = ["main"]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _parser() -> argparse.ArgumentParser:
    from aggregator.config import AggregatorConfig
    from sidecar.config import SidecarConfig
    from webhook_injector.settings import InjectorSettings

    p = argparse.ArgumentParser(prog="sentinel", description="LLM-Sentinel: anomaly detection for LLM apps")
    sub = p.add_subparsers(dest="command", required=True)
    sc = sub.add_parser("sidecar", help="run the sidecar (OTLP receiver, local detection, forwarder)")
    add_arguments(sc, SidecarConfig)
    agg = sub.add_parser("aggregator", help="run the aggregator (ingest from sidecars, journal, metrics)")
    add_arguments(agg, AggregatorConfig)
    wh = sub.add_parser("webhook", help="run the mutating admission webhook that injects the sidecar")
    add_arguments(wh, InjectorSettings)
    demo = sub.add_parser("demo", help="run a sidecar and a traffic generator with injected incidents")
    demo.add_argument("--seconds", type=float, default=20.0, help="how long to generate traffic [20]")
    demo.add_argument("--rate", type=float, default=2000.0, help="spans per second [2000]")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "sidecar":
        from sidecar.app import run
        from sidecar.config import SidecarConfig

        try:
            config = load(SidecarConfig, args=args, section="sidecar")
        except ConfigError as e:
            print(f"sentinel sidecar: invalid setting {e}", file=sys.stderr)
            return 2
        _setup_logging(config.log_level)
        return asyncio.run(run(config))
    if args.command == "aggregator":
        from aggregator.app import run as run_aggregator
        from aggregator.config import AggregatorConfig

        try:
            agg_config = load(AggregatorConfig, args=args, section="aggregator")
        except ConfigError as e:
            print(f"sentinel aggregator: invalid setting {e}", file=sys.stderr)
            return 2
        _setup_logging(agg_config.log_level)
        return asyncio.run(run_aggregator(agg_config))
    if args.command == "webhook":
        from webhook_injector.server import run as run_webhook
        from webhook_injector.settings import InjectorSettings

        try:
            wh_settings = load(InjectorSettings, args=args, section="webhook")
        except ConfigError as e:
            print(f"sentinel webhook: invalid setting {e}", file=sys.stderr)
            return 2
        _setup_logging(wh_settings.log_level)
        return asyncio.run(run_webhook(wh_settings))
    if args.command == "demo":
        from sentinel.demo import run_demo

        _setup_logging("warning")
        return asyncio.run(run_demo(seconds=args.seconds, rate=args.rate))
    return 2


if __name__ == "__main__":
    sys.exit(main())
