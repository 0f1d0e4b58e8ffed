"""Scenario files: traffic, injected incidents with ground-truth labels, and the settings to run with.

A scenario is a YAML file (``loadtest/scenarios/*.yaml``)::

    name: quick
    description: one of each fast incident on a short compressed day
    seed: 7
    duration_s: 1800          # simulated seconds of traffic
    speedup: 30               # simulated seconds per wall-clock second (1800 s play in 60 s)
    rate: 40                  # LLM calls per simulated second, all services together (wall: rate * speedup)
    sidecars: 2               # sidecar processes; services are spread over them
    services: [support-chat, search-rag, doc-summarizer, code-review-bot]
    models: [gpt-4o, gpt-4o-mini, claude-3-5-sonnet-latest]   # names of loadtest.spans.DEFAULT_MODELS
    regions: [eu-west-1, us-east-1]
    users: 50                 # distinct users (user ids user-0 … user-49), Zipf-distributed
    error_rate: 0.01          # natural share of failed calls
    daily_amplitude: 0.3      # calls per second swing over a (simulated) day: rate * (1 + a * sin)
    warmup_s: 600             # no incident may start earlier (baselines learn first)
    grace_s: 120              # simulated seconds after an incident's end an alert still counts
    clean: false              # a control scenario: no incidents, every alert is a false alert
    incidents:
      - id: spike
        type: latency_spike
        start_s: 900
        end_s: 1080
        target: {service: support-chat, model: gpt-4o}
        params: {factor: 8}
        detect_as: [latency_spike, throughput_drop]   # optional; default: DETECT_AS[type]
    aggregator: {alerts: {resolve_after_s: 30}}       # extra aggregator settings (AggregatorConfig keys)
    sidecar: {}                                       # extra sidecar settings (SidecarConfig keys)

Times in the file are simulated seconds from the scenario's start. An alert **detects** an incident
when its ``anomaly_type`` is in the incident's ``detect_as``, its ``service_name`` is the target's
service (when the target names one; an alert without a service matches any), and it is raised
between the incident's injection and its end plus ``grace_s`` (converted to wall time by the
runner). Every other alert is a false alert.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DETECT_AS", "INCIDENT_TYPES", "Incident", "Scenario", "ScenarioError", "load_scenario"]

#: Incident types and the alert types that count as detecting each (the ground-truth labels).
DETECT_AS: dict[str, tuple[str, ...]] = {
    # A slow provider: latency up and, per call, tokens per second down.
    "latency_spike": ("latency_spike", "throughput_drop"),
    "latency_drift": ("latency_spike", "drift", "throughput_drop"),
    # Timeouts and errors from one provider.
    "provider_outage": ("error_burst", "latency_spike", "throughput_drop"),
    "error_burst": ("error_burst",),
    "token_abuse": ("token_abuse", "token_spike", "cost_anomaly", "expensive_prompt"),
    "cost_runaway": ("cost_anomaly", "token_spike", "budget_warning", "budget_exceeded"),
    "model_swap": ("model_swap", "drift"),
    "throughput_drop": ("throughput_drop",),
    "budget_exhaustion": ("budget_exceeded", "budget_warning", "cost_anomaly"),
    # Streaming calls wait longer for their first token; the total latency stays the same.
    "ttft_regression": ("ttft_regression", "latency_spike"),
    # A share of the calls stop at the output limit (finish_reason = length).
    "finish_length": ("finish_length", "token_spike", "drift"),
    # Tokens (so cost) compounding up by a few percent per simulated minute.
    "cost_creep": ("cost_anomaly", "token_spike", "budget_warning", "budget_exceeded"),
    # Outputs collapse to a few tokens at an unchanged latency: (almost) empty answers, tokens per second fall.
    "output_collapse": ("empty_answer", "throughput_drop", "token_spike", "drift"),
    # A request model the service never used before takes a share of its calls.
    "new_model": ("model_swap",),
    # Quality and security (issue 18): a new model version whose answers score worse on hallucination.
    "hallucination_regression": ("quality_regression", "model_swap", "drift"),
    # Users' thumbs-down share rises (feedback on the spans).
    "satisfaction_drop": ("satisfaction_drop",),
    # Answers come back (almost) empty at a normal latency.
    "empty_answers": ("empty_answer", "throughput_drop", "token_spike", "drift"),
    # A jailbreak campaign from one IP: guardrail events on a share of the target's calls, many users.
    "jailbreak_campaign": ("coordinated_attack", "attack_campaign"),
    # One user with token spikes (token_abuse's extra calls) and guardrail events on those calls.
    # Latency and output tokens each as usual, their pairing lost: a call's tokens/s is off, which
    # only a detector of several features at once (the Isolation Forest) or of tokens/s itself sees.
    "decoupled_latency": ("multivariate_outlier", "throughput_drop"),
    "abusive_user": ("security_correlation", "token_abuse", "coordinated_attack", "token_spike", "cost_anomaly",
                     "expensive_prompt"),
}
INCIDENT_TYPES = tuple(DETECT_AS)


class ScenarioError(ValueError):
    """A scenario file that cannot be played; the message names the file and key."""


@dataclass(frozen=True)
class Incident:
    id: str
    type: str
    start_s: float
    end_s: float
    target: dict[str, str] = field(default_factory=dict)  # service, model, user, provider, region
    params: dict[str, Any] = field(default_factory=dict)
    detect_as: tuple[str, ...] = ()

    def active(self, sim_s: float) -> bool:
        return self.start_s <= sim_s < self.end_s


@dataclass(frozen=True)
class Scenario:
    name: str
    duration_s: float
    speedup: float = 1.0
    rate: float = 50.0
    sidecars: int = 1
    seed: int = 0
    description: str = ""
    services: tuple[str, ...] = ("support-chat", "search-rag", "doc-summarizer", "code-review-bot")
    models: tuple[str, ...] = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet-latest")
    regions: tuple[str, ...] = ("eu-west-1", "us-east-1")
    users: int = 50
    error_rate: float = 0.01
    daily_amplitude: float = 0.0
    warmup_s: float = 600.0
    grace_s: float = 120.0
    clean: bool = False
    # The realistic-traffic knobs (None / 0: the traffic model's defaults, see loadtest/traffic.py).
    input_sigma: float | None = None     # log-sigma of every service's prompt tokens (default per service, 0.4)
    latency_sigma: float | None = None   # log-sigma of the latency noise (default 0.25)
    user_zipf_s: float | None = None     # Zipf exponent of the users' call shares (default 0.5)
    timeout_rate: float = 0.0            # share of calls that time out after timeout_ms (natural timeouts)
    timeout_ms: float = 60000.0
    sidecar_restarts: tuple[float, ...] = ()  # simulated seconds at which sidecar 0 is restarted (run.py)
    # Quality and security signals on the spans (loadtest/traffic.py, "signals"); 0: none (as before).
    eval_share: float = 0.0      # calls with a hallucination evaluation score (sentinel.eval.hallucination)
    feedback_share: float = 0.0  # calls with a user's thumbs up/down (sentinel.feedback.label)
    threat_share: float = 0.0    # calls with a background guardrail event (scattered users, low confidence)
    incidents: tuple[Incident, ...] = ()
    aggregator: dict[str, Any] = field(default_factory=dict)
    sidecar: dict[str, Any] = field(default_factory=dict)

    @property
    def wall_seconds(self) -> float:
        """How long the scenario plays in wall-clock time."""
        return self.duration_s / self.speedup

    @property
    def wall_rate(self) -> float:
        """Calls (spans) per wall-clock second, on average."""
        return self.rate * self.speedup

    def validate(self, where: str = "scenario") -> None:
        def fail(key: str, msg: str) -> None:
            raise ScenarioError(f"{where}: {key}: {msg}")

        if not self.name:
            fail("name", "must not be empty")
        for key in ("duration_s", "speedup", "rate"):
            if not getattr(self, key) > 0:
                fail(key, "must be greater than 0")
        if self.sidecars < 1:
            fail("sidecars", "must be at least 1")
        if not self.services or not self.models or not self.regions:
            fail("services/models/regions", "must not be empty")
        if self.users < 1:
            fail("users", "must be at least 1")
        if not 0 <= self.error_rate < 1:
            fail("error_rate", "must be in [0, 1)")
        if not 0 <= self.daily_amplitude < 1:
            fail("daily_amplitude", "must be in [0, 1)")
        for key in ("input_sigma", "latency_sigma", "user_zipf_s"):
            v = getattr(self, key)
            if v is not None and not 0 < v <= 3:
                fail(key, "must be in (0, 3]")
        if not 0 <= self.timeout_rate < 1:
            fail("timeout_rate", "must be in [0, 1)")
        for key in ("eval_share", "feedback_share", "threat_share"):
            if not 0 <= getattr(self, key) <= 1:
                fail(key, "must be in [0, 1]")
        if not self.timeout_ms > 0:
            fail("timeout_ms", "must be greater than 0")
        if any(not 0 <= t < self.duration_s for t in self.sidecar_restarts):
            fail("sidecar_restarts", "every time must be in [0, duration_s)")
        if self.clean and self.incidents:
            fail("incidents", "a clean scenario has none")
        ids = set()
        for i, inc in enumerate(self.incidents):
            key = f"incidents[{i}]"
            if inc.id in ids:
                fail(f"{key}.id", f"{inc.id!r} is used twice")
            ids.add(inc.id)
            if inc.type not in DETECT_AS:
                fail(f"{key}.type", f"{inc.type!r} is not one of {', '.join(INCIDENT_TYPES)}")
            if not self.warmup_s <= inc.start_s < inc.end_s <= self.duration_s:
                fail(f"{key}.start_s/end_s", f"need warmup_s ({self.warmup_s:g}) <= start_s < end_s <= duration_s "
                                            f"({self.duration_s:g})")
            svc = inc.target.get("service")
            if svc is not None and svc not in self.services:
                fail(f"{key}.target.service", f"{svc!r} is not one of the scenario's services")
            model = inc.target.get("model")
            if model is not None and model not in self.models:
                fail(f"{key}.target.model", f"{model!r} is not one of the scenario's models")


def _incident(raw: Any, i: int, where: str) -> Incident:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: incidents[{i}]: must be a map")
    known = {f.name for f in dataclasses.fields(Incident)}
    for key in raw:
        if key not in known:
            raise ScenarioError(f"{where}: incidents[{i}].{key}: unknown key")
    try:
        kind = str(raw["type"])
        return Incident(id=str(raw.get("id", f"{kind}-{i}")), type=kind, start_s=float(raw["start_s"]),
                        end_s=float(raw["end_s"]), target={k: str(v) for k, v in (raw.get("target") or {}).items()},
                        params=dict(raw.get("params") or {}),
                        detect_as=tuple(raw.get("detect_as") or DETECT_AS.get(kind, ())))
    except KeyError as e:
        raise ScenarioError(f"{where}: incidents[{i}].{e.args[0]}: required") from None
    except (TypeError, ValueError) as e:
        raise ScenarioError(f"{where}: incidents[{i}]: {e}") from None


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; :class:`ScenarioError` names the file and the key at fault."""
    where = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ScenarioError(f"{where}: {e}") from None
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: must be a YAML map")
    known = {f.name for f in dataclasses.fields(Scenario)}
    for key in raw:
        if key not in known:
            raise ScenarioError(f"{where}: {key}: unknown key")
    values = dict(raw)
    for key in ("services", "models", "regions"):
        if key in values:
            values[key] = tuple(str(v) for v in values[key])
    if "sidecar_restarts" in values:
        values["sidecar_restarts"] = tuple(float(v) for v in values["sidecar_restarts"] or ())
    values["incidents"] = tuple(_incident(r, i, where) for i, r in enumerate(values.get("incidents") or []))
    values.setdefault("name", Path(path).stem)
    try:
        scenario = Scenario(**values)
    except TypeError as e:
        raise ScenarioError(f"{where}: {e}") from None
    scenario.validate(where)
    return scenario
