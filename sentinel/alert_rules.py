"""The alert rules as pure functions: severity, remediation, root-cause hints (aggregator and edge sidecars).

Severity (``classify``), in this order:

1. the base severity of the anomaly type (:data:`BASE_SEVERITY`, overridable per type with the
   ``alerts.severity`` setting);
2. one step up when the deviation is extreme: ``|deviation_sigma| >= 6``, or the value is at least
   5x its baseline (for ``throughput_drop``: at most a fifth of it);
3. ``error_burst`` with an error rate of 50 % or more is ``critical``;
4. one step down when ``confidence < 0.7`` (never below ``low``).

Remediation suggestions and single-type root-cause hints come from :data:`REMEDIATION` and
:data:`CAUSE`; :func:`correlated_cause` gives one hint for a set of related alerts on one service
(e.g. a latency spike with an error burst points at the provider).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Set

from sentinel.alerts import SEVERITIES, SEVERITY_RANK

__all__ = ["BASE_SEVERITY", "CAUSE", "REMEDIATION", "classify", "correlated_cause"]

BASE_SEVERITY: dict[str, str] = {
    "budget_exceeded": "critical",
    "error_burst": "high",
    "throughput_drop": "high",
    "cost_anomaly": "high",
    "token_abuse": "high",
    "alert_storm": "high",
    "empty_answer": "high",
    "satisfaction_drop": "high",
    "coordinated_attack": "high",
    "attack_campaign": "high",
    "security_correlation": "critical",
    "quality_regression": "medium",
    "content_filter": "medium",
    "latency_spike": "medium",
    "ttft_regression": "medium",
    "finish_length": "medium",
    "token_spike": "medium",
    "drift": "medium",
    "model_swap": "medium",
    "budget_warning": "medium",
    "expensive_prompt": "low",
    "multivariate_outlier": "low",
}
DEFAULT_SEVERITY = "medium"
EXTREME_SIGMA = 6.0
EXTREME_RATIO = 5.0
CRITICAL_ERROR_RATE = 0.5
LOW_CONFIDENCE = 0.7


def _step(severity: str, by: int) -> str:
    return SEVERITIES[min(max(SEVERITY_RANK[severity] - by, 0), len(SEVERITIES) - 1)]


def classify(anomaly_type: str, *, value: float, baseline: float, deviation_sigma: float, confidence: float,
             overrides: Mapping[str, str] | None = None) -> str:
    """The severity of one detection (rules in the module docstring)."""
    severity = (overrides or {}).get(anomaly_type) or BASE_SEVERITY.get(anomaly_type, DEFAULT_SEVERITY)
    extreme = math.isfinite(deviation_sigma) and abs(deviation_sigma) >= EXTREME_SIGMA
    if math.isfinite(value) and math.isfinite(baseline) and baseline > 0:
        if anomaly_type == "throughput_drop":
            extreme = extreme or value <= baseline / EXTREME_RATIO
        else:
            extreme = extreme or value >= baseline * EXTREME_RATIO
    if extreme:
        severity = _step(severity, 1)
    if anomaly_type == "error_burst" and math.isfinite(value) and value >= CRITICAL_ERROR_RATE:
        severity = "critical"
    if confidence < LOW_CONFIDENCE:
        severity = _step(severity, -1)
    return severity


REMEDIATION: dict[str, list[str]] = {
    "latency_spike": [
        "Check the provider's status page and the region's latency",
        "Compare output token counts: longer completions take longer",
        "Review client timeouts and retries, and consider a fallback model",
    ],
    "token_spike": [
        "Look for prompt or context-window growth in the latest release",
        "Check for loops in agents or tools that resend history",
        "Set max_tokens on the calls that grew",
    ],
    "cost_anomaly": [
        "Break the cost down by user, model and operation for the window",
        "Check whether a more expensive model is being called",
        "Set or lower a budget for the service",
    ],
    "error_burst": [
        "Group the errors by error_type: rate limits (429), timeouts, or provider 5xx",
        "Check the provider's status page and your quota",
        "Enable retries with backoff or fail over to another region or model",
    ],
    "throughput_drop": [
        "Check whether the service and its sidecar are running and exporting",
        "Look for upstream rate limiting or an outage turning calls away",
        "Check recent deploys of the calling service",
    ],
    "ttft_regression": [
        "Check the provider's status for queueing or prefill delays (the first token is late, not the answer)",
        "Look for longer prompts or a prompt-cache change on the service",
        "Fail over to another region or model if streaming users wait",
    ],
    "finish_length": [
        "Check max_tokens of the service's requests and recent prompt changes",
        "Look for a model change that answers at greater length",
    ],
    "drift": [
        "Compare the distribution before and after the window (see details)",
        "Check for a provider-side model update or a prompt change",
        "Re-run your evaluation set against the current model",
    ],
    "model_swap": [
        "Confirm whether the response model change was intended",
        "Pin the model version in the request",
        "Re-run your evaluation set against the new model",
    ],
    "budget_exceeded": [
        "Decide whether to raise the budget or throttle the service",
        "Find the top users and operations by cost in the period",
    ],
    "budget_warning": [
        "Review the spend forecast for the rest of the period",
        "Find the top users and operations by cost in the period",
    ],
    "token_abuse": [
        "Review the user's recent calls (see context.user)",
        "Apply a per-user rate or token limit",
        "Rotate the API key if the use is not legitimate",
    ],
    "expensive_prompt": [
        "Inspect the trace of the expensive call",
        "Truncate or summarise long contexts; set max_tokens",
    ],
    "multivariate_outlier": [
        "Inspect the example traces: the explanation names the unusual features",
        "Check whether the combination is a new but legitimate workload",
    ],
    "content_filter": [
        "Read a few filtered traces' finish reasons and the prompts' recent changes (not stored by Sentinel)",
        "Check for a model update with stricter safety filtering (see context.model_version)",
        "Look for one user or IP probing the model: check the security events of the service",
    ],
    "empty_answer": [
        "Inspect an example trace: empty choices, an immediate stop sequence or a broken prompt template",
        "Check the latest release of the prompt templates and stop sequences",
        "Compare with the previous model version (context.previous_model_version) and roll back if it is new",
    ],
    "quality_regression": [
        "Compare the evaluation's score before and after context.model_changed_at (a model or prompt change)",
        "Pin the previous model version (context.previous_model_version) while you investigate",
        "Re-run the offline evaluation set against the current model and prompt",
    ],
    "satisfaction_drop": [
        "Read the recent negative feedback traces (context.trace_ids) for a common failure",
        "Check the service's other alerts (empty answers, truncation, latency) in the same window",
        "Roll back the latest model or prompt change if the drop started with it",
    ],
    "coordinated_attack": [
        "Review the security events of the user, key or IP in context (threat types, actions taken)",
        "Approve the action hook to block or rate-limit the source, or reject it as a false alarm",
        "Rotate the API key if it is being abused",
    ],
    "attack_campaign": [
        "One attack signature is hitting many users: update the guardrail's rules for it",
        "Block the signature at the gateway; look for a shared client or IP range",
    ],
    "security_correlation": [
        "The same user has security events and a token or cost anomaly: treat the account as compromised or abusive",
        "Approve blocking the user or key through the action hook, and review its recent traces",
        "Rotate the key and cap the user's token budget",
    ],
    "alert_storm": [
        "Look at the summarised alerts by service and type: one cause usually explains most",
        "Silence the noisy matcher while you work on it",
    ],
}

CAUSE: dict[str, str] = {
    "latency_spike": "Latency is above the global baseline for this service and model",
    "token_spike": "Calls use many more tokens than usual",
    "ttft_regression": "Streamed calls wait far longer than their baseline for the first token",
    "finish_length": "Many more calls than usual stop at the output-token limit (finish_reason length)",
    "cost_anomaly": "Spend per minute rose above its running baseline (CUSUM)",
    "error_burst": "The error rate rose well above its baseline",
    "throughput_drop": "Fewer calls or tokens per second than the baseline",
    "drift": "The distribution of a metric shifted from its reference window",
    "model_swap": "The provider answered with a different model than before",
    "budget_exceeded": "The budget for the period is spent",
    "budget_warning": "Spend passed the warning share of the budget",
    "token_abuse": "One user or key consumes far more tokens than its peers",
    "expensive_prompt": "A single call cost far more than usual",
    "multivariate_outlier": "An unusual combination of latency, tokens and cost",
    "content_filter": "Many more calls than usual end in a content filter or a refusal",
    "empty_answer": "Many more calls than usual succeed with almost no output at a normal latency",
    "quality_regression": "An evaluation score of the model's answers is worse than its baseline",
    "satisfaction_drop": "Users' positive feedback share fell below its baseline",
    "coordinated_attack": "Many security events from one user, API key or IP in a short window",
    "attack_campaign": "One attack signature seen from many users",
    "security_correlation": "Security events and a token or cost anomaly of the same user together",
}

# Pairs of related anomaly types on one service and the cause they point to together; checked in order.
_COMBINED: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset({"latency_spike", "error_burst"}),
     "Latency and errors rose together: the provider (or the network path to it) is most likely degraded"),
    (frozenset({"throughput_drop", "error_burst"}),
     "Calls dropped while errors rose: an outage or rate limiting upstream is turning calls away"),
    (frozenset({"model_swap", "drift"}),
     "The response model changed and the output distribution shifted with it"),
    (frozenset({"cost_anomaly", "token_abuse"}), "One user's token use drives the cost rise"),
    (frozenset({"cost_anomaly", "model_swap"}), "Cost moved with a change of model"),
    (frozenset({"cost_anomaly", "token_spike"}),
     "Cost rose with tokens per call: longer prompts or outputs, not more calls"),
    (frozenset({"latency_spike", "token_spike"}),
     "Latency rose with output length: longer completions rather than a slower provider"),
    (frozenset({"quality_regression", "model_swap"}),
     "Answer quality fell with a change of model: the new model version scores worse on the evaluation"),
    (frozenset({"satisfaction_drop", "empty_answer"}), "Users are unhappy because answers come back empty"),
    (frozenset({"satisfaction_drop", "finish_length"}), "Users are unhappy because answers are cut off"),
    (frozenset({"satisfaction_drop", "quality_regression"}),
     "Users' feedback fell with the evaluation scores: answer quality regressed"),
    (frozenset({"coordinated_attack", "token_abuse"}), "An attacker is both probing the guardrails and burning tokens"),
    (frozenset({"content_filter", "coordinated_attack"}),
     "Filtered answers rose with an attack: the filter is catching the attacker's prompts"),
    (frozenset({"latency_spike", "throughput_drop"}),
     "Calls slowed down and fewer completed: the provider is saturated or throttling"),
)


def correlated_cause(types: Set[str]) -> str | None:
    """One root-cause hint for a group of related alerts, or ``None`` when no rule covers it."""
    for pair, cause in _COMBINED:
        if pair <= types:
            return cause
    return None
