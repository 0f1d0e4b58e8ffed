"""Notification grouping, as in Prometheus Alertmanager: one alert per group of series.

One provider incident moves every model of a service at once; an alert per (service, type, model)
would page once per model. Series whose labels agree on ``group_by`` (default: ``service_name`` and
``anomaly_type``) are one alert — one notification — whose ``members`` carry the per-model,
per-region or per-user breakdown with each member's value. ``["..."]`` groups by every label (one
alert per series, as without grouping); ``[]`` puts everything in one group.

``group_by_type`` gives an anomaly type its own ``group_by`` (an Alertmanager route per type); a
series that lacks a label its type's ``group_by`` names is grouped by the default ``group_by``.

Some incidents are not one service's: a provider's 429 storm or outage hits every service that
calls it, while a service's own bug hits every provider it calls. ``group_across`` handles both:
for the anomaly types it names (default ``error_burst: [provider]``), a series whose own group has
no open alert **joins** an open alert of its type that has a firing member sharing those labels
(``provider``: the ``gen_ai.system`` of its calls). So a storm on one provider across four services
is one alert with a member per service and model, and a burst of one service across providers is
one alert too (its series share the service).

Some detections are the symptom of another's cause: tokens/s fall when latency rises or outputs are
cut off, and output-token or latency distributions drift during most incidents. ``fold_into``
names, per such secondary type, the primary types that explain it (:data:`DEFAULT_FOLD_INTO`). A
secondary series whose own group has no open alert joins an open alert of one of its primary types
on the same service as a member labelled ``explained_by`` (the primary's type): it is context in
the primary's notification, not a page of its own; the alert's type, severity, labels and summary
head stay the primary members'. An alert resolved shortly before still explains a symptom whose
event-time window overlaps its own, extended by ``resolve_after_s`` (it kept firing that long past
its last detection; a 15-minute drift window; the member joins resolved). A
secondary alert raised first and not sent yet is folded into the primary when that is raised (the
alert manager's ``_absorb``); one already sent is taken over by it (``_adopter``: the same alert,
its next notification under the primary's type).

A provider's outage also slows the calls it does not fail: every service calling it sees a latency
spike while the provider-wide error burst is open. ``fold_across`` names, per such secondary type,
the primary types whose open alert across services explains it (:data:`DEFAULT_FOLD_ACROSS`,
``latency_spike: [error_burst]``): a secondary series whose own group has no open alert joins an
open alert of one of those types when a firing primary member shares the primary type's
``group_across`` labels (the provider) with it — on any service — as an ``explained_by`` member; and
a primary alert raised (or joined by a new series) folds in the not yet sent secondary alerts of
that provider the same way. A latency spike without a provider, or of another provider, stays its
own alert.

Pure logic here (the group key, the alert's aggregate fields from its members, the summary); the
timers (``group_wait``, ``group_interval``, ``repeat_interval``) are the alert manager's.
"""

from __future__ import annotations

import collections
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from sentinel.alerts import SEVERITY_RANK, Alert, AlertDetails, AlertMember
from sentinel.config import ConfigError

__all__ = [
    "ALL_LABELS",
    "DEFAULT_FOLD_ACROSS",
    "DEFAULT_FOLD_INTO",
    "DEFAULT_GROUP_ACROSS",
    "DEFAULT_GROUP_BY",
    "DEFAULT_GROUP_BY_TYPE",
    "EXPLAINED_BY",
    "GROUP_LABELS",
    "explains",
    "explains_across",
    "group_by_for",
    "group_key",
    "joins_across",
    "lead",
    "member_labels",
    "refresh",
    "summary",
    "validate_fold_across",
    "validate_fold_into",
    "validate_group_across",
    "validate_group_by",
    "validate_group_by_type",
]

#: The labels a group may be keyed on (those of a member; the silences' labels).
GROUP_LABELS: tuple[str, ...] = ("service_name", "anomaly_type", "model", "region", "user", "provider",
                                 "detection_method", "severity")
#: ``group_by: ["..."]``: every label, i.e. one alert per series (Alertmanager's spelling).
ALL_LABELS = "..."
DEFAULT_GROUP_BY: tuple[str, ...] = ("service_name", "anomaly_type")
#: Per anomaly type: its own group_by (none by default).
DEFAULT_GROUP_BY_TYPE: dict[str, tuple[str, ...]] = {}
#: Per anomaly type: labels a new series may share with an open alert's member to join it (across groups).
DEFAULT_GROUP_ACROSS: dict[str, tuple[str, ...]] = {"error_burst": ("provider",)}
#: Per secondary anomaly type: the primary types whose open alert on the same service explains it.
#: A tokens/s drop is what a slow provider, a late first token or cut-off / empty outputs look like
#: per call; an output-token or latency distribution drifts over 15 minutes during all of them.
#: More tokens cost more: a service's token spike, expensive prompts and one user's token abuse
#: raise its cost and token figures together (the abuse explains them all). A campaign (one attack
#: signature from many users) is its users' bursts of security events; a security correlation is
#: one user's attack and token abuse together. A budget's warning is part of its being exceeded.
#: Longer prompts and outputs (a token spike, expensive prompts, an abuser's) take longer to prefill and
#: to generate: a later first token, a slower call.
#: Users rate answers down when they come back empty, cut off or worse (the pairs of
#: sentinel.alert_rules' combined causes).
DEFAULT_FOLD_INTO: dict[str, tuple[str, ...]] = {
    "throughput_drop": ("latency_spike", "ttft_regression", "finish_length", "empty_answer"),
    "drift": ("finish_length", "empty_answer", "throughput_drop", "latency_spike", "ttft_regression",
              "error_burst", "model_swap", "quality_regression", "cost_anomaly", "token_spike"),
    "cost_anomaly": ("token_spike", "expensive_prompt", "token_abuse"),
    "expensive_prompt": ("token_spike", "token_abuse"),
    "token_spike": ("token_abuse",),
    # a longer prompt takes longer to prefill, a longer one to answer: the first token and the call come later
    "ttft_regression": ("token_spike", "expensive_prompt", "token_abuse"),
    "latency_spike": ("token_spike", "expensive_prompt", "token_abuse"),
    "coordinated_attack": ("attack_campaign", "security_correlation"),
    "token_abuse": ("security_correlation",),
    "budget_warning": ("budget_exceeded",),
    # the regression is what users get (and its severity what pages); the swap that brought it is context
    "model_swap": ("quality_regression",),
    "satisfaction_drop": ("empty_answer", "finish_length", "quality_regression"),
}
#: Per secondary anomaly type: the primary types whose open alert explains it across services, when a
#: firing primary member shares the primary type's ``group_across`` labels with it: a provider's
#: outage times out the calls it does not fail, so every service calling it sees its latency spike.
DEFAULT_FOLD_ACROSS: dict[str, tuple[str, ...]] = {"latency_spike": ("error_burst",)}
#: The member label of a folded secondary series: the type of the alert that explains it.
EXPLAINED_BY = "explained_by"
# Labels that tell members apart in a summary, most telling first.
_BREAKDOWN = (("model", "models"), ("region", "regions"), ("user", "users"), ("service_name", "services"),
              ("anomaly_type", "types"), ("metric", "metrics"))
_SUMMARY_MEMBERS = 5
# Context keys that name one series (sentinel/alerts.py _SCOPE_KEYS): kept on the group
# only while every member shares them.
_SCOPE_KEYS = ("user", "api_key_hash", "region", "scope", "scope_value")


def validate_group_by(group_by: object, setting: str = "alerts.group_by") -> None:
    if not isinstance(group_by, list | tuple) or not all(isinstance(x, str) for x in group_by):
        raise ConfigError(f"{setting}: must be a list of label names")
    if ALL_LABELS in group_by and len(group_by) > 1:
        raise ConfigError(f"{setting}: {ALL_LABELS!r} must be the only entry")
    for name in group_by:
        if name != ALL_LABELS and name not in GROUP_LABELS:
            raise ConfigError(f"{setting}: unknown label {name!r} (one of {', '.join(GROUP_LABELS)}, "
                              f"or {ALL_LABELS!r} alone)")


def validate_group_by_type(by_type: object) -> None:
    if not isinstance(by_type, Mapping) or not all(isinstance(k, str) and k for k in by_type):
        raise ConfigError("alerts.group_by_type: must be a map of anomaly type to a list of label names")
    for anomaly_type, group_by in by_type.items():
        validate_group_by(group_by, f"alerts.group_by_type.{anomaly_type}")


def validate_group_across(across: object) -> None:
    if not isinstance(across, Mapping) or not all(isinstance(k, str) and k for k in across):
        raise ConfigError("alerts.group_across: must be a map of anomaly type to a list of label names")
    for anomaly_type, names in across.items():
        validate_group_by(names, f"alerts.group_across.{anomaly_type}")
        if not names or ALL_LABELS in names:
            raise ConfigError(f"alerts.group_across.{anomaly_type}: must name at least one label (not {ALL_LABELS!r})")


def validate_fold_into(fold: object, setting: str = "alerts.fold_into") -> None:
    if not isinstance(fold, Mapping) or not all(isinstance(k, str) and k for k in fold):
        raise ConfigError(f"{setting}: must be a map of anomaly type to a list of anomaly types")
    for anomaly_type, primaries in fold.items():
        if not isinstance(primaries, list | tuple) or not all(isinstance(x, str) and x for x in primaries):
            raise ConfigError(f"{setting}.{anomaly_type}: must be a list of anomaly types")
        if anomaly_type in primaries:
            raise ConfigError(f"{setting}.{anomaly_type}: a type cannot explain itself")


def validate_fold_across(fold: object) -> None:
    # A primary type without group_across labels folds nothing across: nothing tells its provider.
    validate_fold_into(fold, "alerts.fold_across")


def explains(alert: Alert, service: str | None) -> bool:
    """Whether ``alert`` has a primary member on ``service``, firing unless the alert is resolved (a
    secondary series of that service may fold in)."""
    return bool(service) and any((m.status == "firing" or alert.status == "resolved") and EXPLAINED_BY not in m.labels
                                 and m.labels.get("service_name") == service for m in alert.members)


def explains_across(alert: Alert, names: Sequence[str], labels: Mapping[str, str]) -> bool:
    """Whether a secondary series with ``labels`` may fold into ``alert`` across services (``fold_across``):
    a firing primary member shares every label of ``names`` (the primary type's ``group_across``)."""
    return bool(names) and all(labels.get(k) for k in names) and any(
        m.status == "firing" and EXPLAINED_BY not in m.labels and all(m.labels.get(k) == labels[k] for k in names)
        for m in alert.members)


def _primary(members: Sequence[AlertMember]) -> Sequence[AlertMember]:
    """The members the alert is about: all but the folded secondary ones (all when only those are left)."""
    own = [m for m in members if EXPLAINED_BY not in m.labels]
    return own or members


def joins_across(names: Sequence[str], labels: Mapping[str, str], alert: Alert) -> bool:
    """Whether a series with ``labels`` may join ``alert`` (of its type): a firing member shares every
    label of ``names``, none of them empty."""
    if not all(labels.get(k) for k in names):
        return False
    return any(m.status == "firing" and all(m.labels.get(k) == labels[k] for k in names) for m in alert.members)


def group_by_for(group_by: Sequence[str], by_type: Mapping[str, Sequence[str]],
                 labels: Mapping[str, str]) -> Sequence[str]:
    """The ``group_by`` of a series: its anomaly type's, when it has every label of it, else the default."""
    own = by_type.get(labels.get("anomaly_type", ""))
    if own is None or not all(k == ALL_LABELS or labels.get(k) for k in own):
        return group_by
    return own


def group_key(group_by: Sequence[str], labels: Mapping[str, str], series_key: str) -> str:
    """The group's fingerprint: the series' own under ``["..."]``, else a hash of the ``group_by`` values."""
    if ALL_LABELS in group_by:
        return series_key
    parts = ["group", *(f"{k}={labels.get(k, '')}" for k in group_by)]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def _common(members: Sequence[AlertMember]) -> dict[str, str]:
    first = members[0].labels
    return {k: v for k, v in first.items() if all(m.labels.get(k) == v for m in members[1:])}


def lead(alert: Alert) -> AlertMember:
    """The member the alert's top-level ``details`` show: the most severe firing one, the first on ties."""
    members = _primary(alert.members)
    live = [m for m in members if m.status == "firing"] or members
    return min(live, key=lambda m: (SEVERITY_RANK[m.severity], m.first_seen))


def refresh(alert: Alert) -> None:
    """Recompute the alert's aggregate fields from its members (after a member joined, folded or resolved)."""
    members = alert.members
    if not members:
        return
    top = lead(alert)
    common = _common(_primary(members))
    alert.severity = top.severity
    alert.details = AlertDetails(**top.details.to_dict())
    alert.peak_value = top.peak_value
    alert.confidence = max(m.confidence for m in members)
    alert.count = sum(m.count for m in members)
    alert.first_seen = min(m.first_seen for m in members)
    alert.last_seen = max(m.last_seen for m in members)
    alert.service_name = common.get("service_name") or None
    alert.model = common.get("model") or None
    alert.anomaly_type = common.get("anomaly_type") or top.labels.get("anomaly_type") or alert.anomaly_type
    methods = sorted({m.labels.get("detection_method", "") for m in members} - {""})
    alert.detection_method = ",".join(methods) or alert.detection_method
    group = alert.labels.get("group")
    alert.labels = {k: v for k, v in common.items() if k != "metric" and k not in ("api_key_hash", "scope",
                                                                                   "scope_value")}
    alert.labels["severity"] = alert.severity
    if group:
        alert.labels["group"] = group
    for key in _SCOPE_KEYS:
        if key in alert.context and common.get(key) != str(alert.context[key]):
            del alert.context[key]
    alert.silenced_by = members[0].silenced_by if all(m.silenced_by for m in members) else None
    alert.summary = summary(alert)


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def _measured(d: AlertDetails) -> str:
    text = f"{d.metric} {_fmt(d.value)} vs baseline {_fmt(d.baseline)}"
    if d.deviation_sigma is not None and math.isfinite(d.deviation_sigma):
        text += f" ({d.deviation_sigma:+.1f} sigma)"
    return text


def _name(m: AlertMember, varying: Sequence[str]) -> str:
    return "/".join(m.labels.get(k, "") or "-" for k in varying) or m.key


def summary(a: Alert) -> str:
    """One line: what, where, how far off; for several members how many and which, and the worst."""
    where = " / ".join(p for p in (a.service_name, a.model) if p) or "all services"
    head = f"{a.anomaly_type.replace('_', ' ')} on {where}"
    region = a.labels.get("region")
    if region and a.context.get("regional") and all(m.labels.get("region") == region for m in a.members):
        # One region shifted while the others stayed at their level (aggregator/analysis/detectors/level_shift.py).
        ratio = a.context.get("ratio")
        head += f" in {region} only"
        if isinstance(ratio, int | float):
            head += f" ({a.details.metric} x{ratio:.1f})"
    members = _primary(a.members)
    if len(members) <= 1:
        text = f"{head}: {_measured(a.details)}"
    else:
        common = _common(members)
        varying = [k for k, _ in _BREAKDOWN if k not in common and any(k in m.labels for m in members)]
        noun = next((n for k, n in _BREAKDOWN if k in varying), "series")
        names = [_name(m, varying) for m in members[:_SUMMARY_MEMBERS]]
        more = len(members) - len(names)
        listed = ", ".join(names) + (f" and {more} more" if more > 0 else "")
        text = f"{head}: {len(members)} {noun} ({listed}); worst {_name(lead(a), varying)}: {_measured(a.details)}"
    explained = collections.Counter(m.labels.get("anomaly_type", "") for m in a.members
                                    if len(members) < len(a.members) and EXPLAINED_BY in m.labels)
    if explained:
        text += "; explains " + ", ".join(f"{t.replace('_', ' ')} ({n} series)" for t, n in sorted(explained.items()))
    if a.count > 1:
        text += f", seen {a.count} times"
    return text


def member_labels(labels: Mapping[str, str], context: Mapping[str, Any], metric: str) -> dict[str, str]:
    """A member's labels: the alert labels of its series plus its metric and the other scope keys."""
    out = dict(labels)
    out["metric"] = metric
    for key in _SCOPE_KEYS:
        if context.get(key) not in (None, ""):
            out[key] = str(context[key])
    return out
