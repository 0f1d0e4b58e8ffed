"""The webhook package's public API and its README stay complete."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import webhook_injector
from webhook_injector.metrics import WebhookMetrics
from webhook_injector.settings import InjectorSettings

README = (Path(__file__).resolve().parents[1] / "webhook_injector" / "README.md").read_text()


def test_public_api() -> None:
    assert sorted(webhook_injector.__all__) == [
        "InjectorSettings", "WebhookMetrics", "WebhookServer", "annotation_warnings", "inject", "mutate",
        "review", "should_inject"]
    for name in webhook_injector.__all__:
        assert getattr(webhook_injector, name) is not None


def test_every_setting_annotation_reason_and_metric_is_documented() -> None:
    mutate = importlib.import_module("webhook_injector.mutate")  # the package re-exports a function of that name
    names = [f"`{f.name}`" for f in dataclasses.fields(InjectorSettings)]
    names += [f"`{getattr(mutate, a)}`" for a in dir(mutate) if a.startswith("ANNOTATION_")]
    names += [f"`{r}`" for r in mutate.SKIP_REASONS]
    names += [f"`{m.name}_total`" for m in WebhookMetrics().registry.collect()]
    missing = [n for n in names if n not in README]
    assert missing == []
