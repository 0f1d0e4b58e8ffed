"""The load-test traffic model: seeded, vectorised LLM calls of a :class:`~loadtest.scenario.Scenario`.

    model = TrafficModel(load_scenario("loadtest/scenarios/quick.yaml"))
    batch = model.calls(900.0, 903.0)              # every call starting in [900 s, 903 s) of simulated time
    requests = model.requests(900.0, 903.0, start_unix_nano)   # {service: ExportTraceServiceRequest}

Everything is a pure function of the scenario (its ``seed`` included): simulated time is cut into
blocks of :data:`BLOCK_S` seconds, each drawn from its own generator
(``numpy.random.default_rng([seed, block, stream])``), so the calls of an interval do not depend on
how the player slices time into ticks, and a ``clean`` twin of a scenario (same seed, no incidents)
has exactly the same base traffic. ``loadtest/SCENARIOS.md`` describes the model and every incident.

Normal traffic:

* arrivals: Poisson at ``rate · (1 + daily_amplitude · sin(2π t / 86400))`` calls per simulated second
  (``t`` from the scenario's start), all services together, by thinning;
* service: by :data:`SERVICE_PROFILES` shares (unknown service names get a profile derived from the
  name); model: every scenario model, the service's "own" one (index = service index mod models)
  twice as likely; region: uniform; pod: one of :data:`PODS_PER_REGION` per (service, region);
  user: Zipf over ``user-0 … user-{users-1}`` with exponent :data:`USER_ZIPF_S`;
* tokens: lognormal per service (input and output medians and log-sigmas of the profile), output
  clipped to :data:`MAX_OUTPUT_TOKENS`;
* latency: ``(first_token_ms + ms_per_token · output + 0.02 · input) · LN(0, 0.25)``, from the
  model's :class:`~loadtest.spans.ModelProfile`; a service's ``stream_share`` of calls stream and
  carry a time to first token, ``(first_token_ms + 0.02 · input) · (the same noise) · LN(0, 0.15)``
  (at most 90 % of the latency);
* errors: ``error_rate`` of calls fail (``RateLimitError`` fast, ``InternalServerError`` after about
  the first-token time), with no output tokens and no usage attributes on their spans;
* finish reason ``stop`` / ``length`` / ``tool_calls`` (88 / 4 / 8 %).

Cost is not set on spans: the sidecar computes it from the tokens and the (real) model names.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from loadtest.scenario import Incident, Scenario
from loadtest.spans import DEFAULT_MODELS, INJECTED_ATTRIBUTE, ModelProfile, call_attributes, set_attribute, span_name

__all__ = [
    "BLOCK_S",
    "ERROR_TYPES",
    "FINISH_REASONS",
    "INCIDENT_DEFAULTS",
    "MAX_OUTPUT_TOKENS",
    "MODEL_CATALOGUE",
    "PODS_PER_REGION",
    "RATE_INCIDENTS",
    "SERVICE_PROFILES",
    "USER_ZIPF_S",
    "CallBatch",
    "ServiceProfile",
    "TrafficModel",
    "incident_defaults",
]

#: Simulated seconds per generator block (see the module docstring).
BLOCK_S = 10.0
#: Zipf exponent of the users' call shares. Not steeper: the token-abuse detector flags a user
#: above 10x the median of its service's users, and with 50 users an exponent of 1.1 puts the head
#: user ~36x above the median on clean traffic (0.5: ~5x).
USER_ZIPF_S = 0.5
PODS_PER_REGION = 2
MAX_OUTPUT_TOKENS = 8192
NAMESPACE = "llm-apps"
#: Error types and HTTP statuses (index = ``CallBatch.error_type``; -1 = no error).
ERROR_TYPES: tuple[tuple[str, int], ...] = (("RateLimitError", 429), ("InternalServerError", 500),
                                            ("APITimeoutError", 504))
RATE_LIMIT, INTERNAL, TIMEOUT = range(3)
FINISH_REASONS: tuple[str, ...] = ("stop", "length", "tool_calls")
_FINISH_P = np.array([0.88, 0.04, 0.08])
_LATENCY_SIGMA = 0.25
_TTFT_SIGMA = 0.15
_PREFILL_MS_PER_TOKEN = 0.02

#: Models a scenario may name (``models:``): the spans' defaults plus two more with real prices.
MODEL_CATALOGUE: dict[str, ModelProfile] = {m.request_model: m for m in (
    *DEFAULT_MODELS,
    ModelProfile("openai", "gpt-4.1-mini", "gpt-4.1-mini-2025-04-14", "api.openai.com", 350.0, 6.0),
    ModelProfile("anthropic", "claude-3-5-haiku-latest", "claude-3-5-haiku-20241022", "api.anthropic.com",
                 400.0, 8.0),
)}

_SCOPES = {"openai": ("opentelemetry.instrumentation.openai_v2", "2.1b0"),
           "anthropic": ("opentelemetry.instrumentation.anthropic", "0.40.2"),
           "aws.bedrock": ("opentelemetry.instrumentation.botocore", "0.51b0")}


class ServiceProfile(NamedTuple):
    """How one service calls LLMs: its share of the calls and its token distributions."""

    share: float
    input_median: float
    input_sigma: float  # of log(tokens)
    output_median: float
    output_sigma: float
    stream_share: float


SERVICE_PROFILES: dict[str, ServiceProfile] = {
    "support-chat": ServiceProfile(0.35, 800.0, 0.4, 180.0, 0.6, 0.8),
    "search-rag": ServiceProfile(0.30, 2500.0, 0.4, 220.0, 0.5, 0.5),
    "doc-summarizer": ServiceProfile(0.15, 6000.0, 0.4, 350.0, 0.5, 0.1),
    "code-review-bot": ServiceProfile(0.20, 3000.0, 0.4, 450.0, 0.7, 0.3),
}
# Input log-sigmas are 0.4: the expensive-prompt detector (default factor 4) flags prompts above 4x
# the key's p95, which a lognormal exceeds once in ~6e6 calls with sigma 0.4, ~1e6 with 0.45, ~2e5
# with 0.5 and ~1.4e3 with 0.9 — at 1,200 calls/s sigma 0.5 already means a false alert every few
# minutes (quick.yaml with 0.7-0.9 raised 19 false expensive_prompt alerts in 80 s; with 0.5, 2).


def _splitmix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64's finaliser, element-wise (uint64 arithmetic wraps, as intended)."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    out: npt.NDArray[np.uint64] = z ^ (z >> np.uint64(31))
    return out


def _choice(rng: np.random.Generator, k: int, n: int, p: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """``n`` draws of 0 .. k-1 with probabilities ``p``."""
    return np.asarray(rng.choice(k, size=(n,), p=p), dtype=np.int64)


def _profile_for(name: str) -> ServiceProfile:
    """A stable made-up profile for a service not in :data:`SERVICE_PROFILES`."""
    h = zlib.crc32(name.encode())
    return ServiceProfile(0.25, 500.0 + h % 3500, 0.3 + (h >> 8) % 2 / 10, 100.0 + (h >> 12) % 400,
                          0.4 + (h >> 16) % 4 / 10, (h >> 20) % 10 / 10)


#: What each incident type changes, with its parameters' defaults (``params:`` of the incident).
INCIDENT_DEFAULTS: dict[str, dict[str, Any]] = {
    "latency_spike": {"factor": 8.0},
    "latency_drift": {"factor": 4.0},
    "provider_outage": {"error_rate": 0.8, "timeout_ms": 30000.0},
    "error_burst": {"error_rate": 0.5},
    "token_abuse": {"factor": 20.0, "user": "user-abuser"},  # calls_per_s: 20 % of the scenario's rate
    "cost_runaway": {"factor": 6.0, "rate_factor": 2.0},
    "model_swap": {"output_factor": 0.4},  # to: the next scenario model's response model
    "throughput_drop": {"factor": 0.1},
    "budget_exhaustion": {"factor": 20.0},
    "ttft_regression": {"factor": 5.0},
    "finish_length": {"share": 0.4},
    "cost_creep": {"per_min": 0.03},  # tokens x (1 + per_min) ** minutes since the start
    "output_collapse": {"tokens": 5.0},
    "new_model": {"to": "gpt-4.1-mini", "share": 0.3},
    "hallucination_regression": {"mean": 0.45, "version": "-2024-11-20"},  # version: appended to the response model
    "satisfaction_drop": {"satisfaction": 0.6},
    "empty_answers": {"tokens": 1.0},
    "jailbreak_campaign": {"share": 0.05, "ip": "203.0.113.66", "signature": "dan-v12"},
    "abusive_user": {"factor": 20.0, "user": "user-abuser", "threat_share": 0.3},  # calls_per_s as token_abuse
    "decoupled_latency": {"share": 1.0},
}
#: Guardrail threat types of the signals (index = the ``threat`` column).
THREATS = ("prompt_injection", "jailbreak", "toxic", "pii_leak")
#: The clean hallucination score (mean, sd) and users' satisfaction of the signals.
CLEAN_EVAL = (0.1, 0.05)
CLEAN_SATISFACTION = 0.93
#: Incident types that change how many calls the target makes.
RATE_INCIDENTS = ("token_abuse", "cost_runaway", "throughput_drop", "budget_exhaustion")


def incident_defaults(incident: Incident, scenario: Scenario) -> dict[str, Any]:
    """The incident's parameters with every default filled in (see :data:`INCIDENT_DEFAULTS`)."""
    p: dict[str, Any] = dict(INCIDENT_DEFAULTS.get(incident.type, {}))
    p.update(incident.params)
    if incident.type in ("token_abuse", "abusive_user"):
        p.setdefault("calls_per_s", 0.2 * scenario.rate)
        p["user"] = str(incident.target.get("user", p["user"]))
    if incident.type == "model_swap" and "to" not in p:
        models = list(scenario.models)
        own = incident.target.get("model", models[0])
        other = models[(models.index(own) + 1) % len(models)] if own in models else models[0]
        p["to"] = MODEL_CATALOGUE[other].response_model if other in MODEL_CATALOGUE else other
    elif incident.type == "model_swap" and str(p["to"]) in MODEL_CATALOGUE:
        p["to"] = MODEL_CATALOGUE[str(p["to"])].response_model
    if incident.type == "new_model" and str(p["to"]) not in MODEL_CATALOGUE:
        raise ValueError(f"incident {incident.id}: to: {p['to']!r} is not in the traffic model's catalogue")
    for key in ("factor", "rate_factor", "error_rate", "timeout_ms", "calls_per_s", "output_factor", "share",
                "per_min", "tokens"):
        if key in p:
            p[key] = float(p[key])
    return p


IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class CallBatch:
    """Calls as columns (one entry per call, in start-time order); categorical columns are codes
    into the model's name tables (:attr:`TrafficModel.services` and so on)."""

    t: FloatArray               # start, simulated seconds from the scenario's start
    service: IntArray           # TrafficModel.services
    model: IntArray             # TrafficModel.profiles (request model, provider, timings)
    region: IntArray            # TrafficModel.regions
    pod: IntArray               # 0 .. PODS_PER_REGION - 1
    user: IntArray              # TrafficModel.users
    input_tokens: IntArray
    output_tokens: IntArray     # 0 for failed calls
    latency_ms: FloatArray
    ttft_ms: FloatArray         # NaN for calls that do not stream (and failed ones)
    is_error: BoolArray
    error_type: IntArray        # ERROR_TYPES, -1 when the call succeeded
    finish_reason: IntArray     # FINISH_REASONS, -1 for failed calls
    response_model: IntArray    # TrafficModel.response_models
    incident: IntArray          # index into scenario.incidents of the incident that changed the call, -1 if none
    eval_score: FloatArray      # hallucination score in [0, 1], NaN: not evaluated
    feedback: IntArray          # 1 thumbs up, 0 thumbs down, -1 none
    threat: IntArray            # THREATS index of a guardrail event on the call, -1 none
    ip: IntArray                # -1: the user's own address; k >= 0: TrafficModel.campaign_ips[k]

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def take(self, index: npt.NDArray[Any] | slice) -> CallBatch:
        """The calls at ``index`` (integer positions or a boolean mask)."""
        return CallBatch(**{f: getattr(self, f)[index] for f in _FIELDS})

    @staticmethod
    def concat(batches: Sequence[CallBatch]) -> CallBatch:
        return CallBatch(**{f: np.concatenate([getattr(b, f) for b in batches]) for f in _FIELDS})


_FIELDS = tuple(CallBatch.__dataclass_fields__)


class _Effects(NamedTuple):
    incident: Incident
    number: int  # index in scenario.incidents
    params: dict[str, Any]


class TrafficModel:
    """The calls of a scenario (module docstring). Cheap to build; keeps a few blocks cached."""

    def __init__(self, scenario: Scenario) -> None:
        unknown = [m for m in scenario.models if m not in MODEL_CATALOGUE]
        if unknown:
            raise ValueError(f"models: {', '.join(unknown)} not in the traffic model's catalogue "
                             f"({', '.join(MODEL_CATALOGUE)})")
        self.scenario = scenario
        self.services: tuple[str, ...] = scenario.services
        profiles = [MODEL_CATALOGUE[m] for m in scenario.models]
        self.effects = tuple(_Effects(inc, i, incident_defaults(inc, scenario))
                             for i, inc in enumerate(scenario.incidents))
        # A new_model incident's model gets a profile index after the scenario's own (never drawn
        # by normal traffic: model_p covers the scenario's models only).
        for e in self.effects:
            if e.incident.type == "new_model" and MODEL_CATALOGUE[str(e.params["to"])] not in profiles:
                profiles.append(MODEL_CATALOGUE[str(e.params["to"])])
        self.profiles: tuple[ModelProfile, ...] = tuple(profiles)
        self.regions: tuple[str, ...] = scenario.regions
        self.service_profiles = tuple(SERVICE_PROFILES.get(s) or _profile_for(s) for s in self.services)
        users = [f"user-{i}" for i in range(scenario.users)]
        for e in self.effects:
            if e.incident.type in ("token_abuse", "abusive_user") and e.params["user"] not in users:
                users.append(e.params["user"])
        self.users: tuple[str, ...] = tuple(users)
        self._user_index = {u: i for i, u in enumerate(users)}
        responses = [p.response_model for p in self.profiles]
        for e in self.effects:
            if e.incident.type == "model_swap" and str(e.params["to"]) not in responses:
                responses.append(str(e.params["to"]))
        self.response_models: list[str] = list(responses)  # grows with new versions (hallucination_regression)
        self.campaign_ips: list[str] = []
        self._response_index = {r: i for i, r in enumerate(responses)}
        shares = np.array([p.share for p in self.service_profiles])
        self.service_p = shares / shares.sum()
        n_models = len(scenario.models)
        w = np.zeros((len(self.services), len(self.profiles)))
        w[:, :n_models] = 1.0
        for s in range(len(self.services)):
            w[s, s % n_models] += 1.0
        self.model_p = w / w.sum(axis=1, keepdims=True)  # P(model | service)
        zipf_s = USER_ZIPF_S if scenario.user_zipf_s is None else scenario.user_zipf_s
        zipf = 1.0 / np.arange(1, scenario.users + 1) ** zipf_s
        self.user_p = zipf / zipf.sum()
        self.pods = tuple(tuple(tuple(f"{s}-{zlib.crc32(f'{s}/{r}'.encode()) & 0xFFFFFF:06x}-{k}"
                                      for k in range(PODS_PER_REGION)) for r in self.regions)
                          for s in self.services)
        self._cache: dict[int, CallBatch] = {}

    # --- calls ---------------------------------------------------------------------------------

    def rate_at(self, t: float | FloatArray) -> Any:
        """Calls per simulated second at ``t`` (normal traffic, all services)."""
        sc = self.scenario
        return sc.rate * (1.0 + sc.daily_amplitude * np.sin(2 * math.pi * np.asarray(t) / 86400.0))

    def calls(self, sim_t0: float, sim_t1: float) -> CallBatch:
        """Every call starting in ``[sim_t0, sim_t1)`` simulated seconds, in time order."""
        if sim_t1 <= sim_t0:
            return self._empty()
        first, last = int(sim_t0 // BLOCK_S), math.ceil(sim_t1 / BLOCK_S)
        parts = []
        for b in range(max(first, 0), last):
            block = self._block(b)
            lo, hi = np.searchsorted(block.t, [sim_t0, sim_t1], side="left")
            if hi > lo:
                parts.append(block.take(slice(int(lo), int(hi))))
        return CallBatch.concat(parts) if parts else self._empty()

    def _empty(self) -> CallBatch:
        i, f = np.zeros(0, np.int64), np.zeros(0, np.float64)
        return CallBatch(t=f, service=i, model=i, region=i, pod=i, user=i, input_tokens=i, output_tokens=i,
                         latency_ms=f, ttft_ms=f, is_error=np.zeros(0, bool), error_type=i, finish_reason=i,
                         response_model=i, incident=i, eval_score=f, feedback=i, threat=i, ip=i)

    def _block(self, b: int) -> CallBatch:
        cached = self._cache.get(b)
        if cached is not None:
            return cached
        batch = self._generate(b)
        if len(self._cache) >= 8:
            self._cache.pop(min(self._cache))
        self._cache[b] = batch
        return batch

    def _arrivals(self, rng: np.random.Generator, t0: float, t1: float, multiplier: float) -> FloatArray:
        """Poisson arrival times in [t0, t1) at ``multiplier`` x the normal rate (thinning)."""
        sc = self.scenario
        top = sc.rate * (1.0 + sc.daily_amplitude) * multiplier
        n = int(rng.poisson(top * (t1 - t0)))
        t = np.sort(rng.uniform(t0, t1, n))
        keep = rng.random(n) * top < self.rate_at(t) * multiplier
        out: FloatArray = t[keep]
        return out

    def _draw(self, rng: np.random.Generator, t: FloatArray) -> dict[str, Any]:
        """Normal calls (before incidents and latency) at times ``t``: the raw columns."""
        n = t.shape[0]
        service = _choice(rng, len(self.services), n, self.service_p)
        u: FloatArray = rng.random((n,))
        cdf = np.cumsum(self.model_p, axis=1)
        model = np.minimum((u[:, None] >= cdf[service]).sum(axis=1), len(self.profiles) - 1).astype(np.int64)
        sp = self.service_profiles
        in_med = np.array([p.input_median for p in sp])[service]
        in_sig = np.array([p.input_sigma if self.scenario.input_sigma is None else self.scenario.input_sigma
                           for p in sp])[service]
        out_med = np.array([p.output_median for p in sp])[service]
        out_sig = np.array([p.output_sigma for p in sp])[service]
        stream_p = np.array([p.stream_share for p in sp])[service]
        z = rng.standard_normal((4, n))
        input_tokens = np.clip(np.exp(np.log(in_med) + in_sig * z[0]), 5, 200_000)
        output_tokens = np.clip(np.exp(np.log(out_med) + out_sig * z[1]), 1, MAX_OUTPUT_TOKENS)
        return {
            "t": t, "service": service, "model": model,
            "region": rng.integers(0, len(self.regions), n).astype(np.int64),
            "pod": rng.integers(0, PODS_PER_REGION, n).astype(np.int64),
            "user": _choice(rng, len(self.user_p), n, self.user_p),
            "input_tokens": input_tokens, "output_tokens": output_tokens,
            "noise": np.exp((self.scenario.latency_sigma or _LATENCY_SIGMA) * z[2]),
            "ttft_noise": np.exp(_TTFT_SIGMA * z[3]),
            "stream": rng.random(n) < stream_p,
            "is_error": rng.random(n) < self.scenario.error_rate,
            "timeout": rng.random(n) < self.scenario.timeout_rate,
            "error_type": np.where(rng.random(n) < 0.6, RATE_LIMIT, INTERNAL).astype(np.int64),
            "finish_reason": _choice(rng, len(FINISH_REASONS), n, _FINISH_P),
            "incident": np.full(n, -1, np.int64),
        }

    def _matches(self, cols: dict[str, Any], target: dict[str, str]) -> BoolArray:
        n = cols["t"].shape[0]
        mask = np.ones(n, bool)
        if "service" in target:
            mask &= cols["service"] == self.services.index(target["service"])
        if "model" in target:
            names = [p.request_model for p in self.profiles]
            mask &= cols["model"] == (names.index(target["model"]) if target["model"] in names else -1)
        if "provider" in target:
            ids = [i for i, p in enumerate(self.profiles) if p.provider == target["provider"]]
            mask &= np.isin(cols["model"], ids)
        if "region" in target:
            mask &= cols["region"] == (self.regions.index(target["region"]) if target["region"] in self.regions
                                       else -1)
        if "user" in target:
            mask &= cols["user"] == self._user_index.get(target["user"], -1)
        return mask

    def _generate(self, b: int) -> CallBatch:
        sc = self.scenario
        seed = sc.seed & 0xFFFFFFFF
        t0, t1 = b * BLOCK_S, (b + 1) * BLOCK_S
        rng = np.random.default_rng([seed, b, 0])
        parts = [self._draw(rng, self._arrivals(rng, t0, t1, 1.0))]
        live: list[_Effects] = [e for e in self.effects if e.incident.start_s < t1 and e.incident.end_s > t0]
        # Extra calls (streams 1 + incident index).
        for e in live:
            inc, p = e.incident, e.params
            lo, hi = max(t0, inc.start_s), min(t1, inc.end_s)
            extra_rate = {"cost_runaway": p.get("rate_factor", 1.0) - 1.0,
                          "budget_exhaustion": p.get("factor", 1.0) - 1.0}.get(inc.type, 0.0)
            erng = np.random.default_rng([seed, b, 1 + e.number])
            if extra_rate > 0:
                cols = self._draw(erng, self._arrivals(erng, lo, hi, extra_rate))
                cols["incident"][:] = e.number
                parts.append({k: v[self._matches(cols, inc.target)] for k, v in cols.items()})
            elif inc.type in ("token_abuse", "abusive_user"):
                n = int(erng.poisson(p["calls_per_s"] * (hi - lo)))
                cols = self._draw(erng, np.sort(erng.uniform(lo, hi, n)))
                if "service" in inc.target:
                    cols["service"][:] = self.services.index(inc.target["service"])
                if "model" in inc.target:
                    cols["model"][:] = [q.request_model for q in self.profiles].index(inc.target["model"])
                cols["user"][:] = self._user_index[p["user"]]
                cols["input_tokens"] = np.clip(cols["input_tokens"] * p["factor"], 5, 2_000_000)
                cols["incident"][:] = e.number
                parts.append(cols)
        cols = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
        order = np.argsort(cols["t"], kind="stable")
        cols = {k: v[order] for k, v in cols.items()}
        n = cols["t"].shape[0]
        t = cols["t"]
        response_model = cols["model"].copy()  # profile i's response model has index i
        latency_factor = np.ones(n)
        keep = np.ones(n, bool)
        outage_ms = np.where(cols["timeout"], sc.timeout_ms, np.nan)
        cols["is_error"] |= cols["timeout"]
        cols["error_type"][cols["timeout"]] = TIMEOUT
        ttft_factor = np.ones(n)
        keep_latency_tokens = cols["output_tokens"].copy()  # output_collapse keeps the latency of these
        # Effects on the calls (streams 1000 + incident index).
        for e in live:
            inc, p = e.incident, e.params
            hit = (t >= inc.start_s) & (t < inc.end_s) & self._matches(cols, inc.target)
            if not hit.any():
                continue
            erng = np.random.default_rng([seed, b, 1000 + e.number])
            u = erng.random(n)
            kind = inc.type
            if kind == "throughput_drop":
                drop = hit & (u >= p["factor"])
                keep &= ~drop
                hit = hit & ~drop  # the calls left are unchanged (but labelled)
            elif kind == "latency_spike":
                latency_factor[hit] *= p["factor"]
            elif kind == "latency_drift":
                ramp = (t[hit] - inc.start_s) / (inc.end_s - inc.start_s)
                latency_factor[hit] *= 1.0 + (p["factor"] - 1.0) * ramp
            elif kind == "provider_outage":
                fail = hit & (u < p["error_rate"])
                cols["is_error"] |= fail
                cols["error_type"][fail] = TIMEOUT
                outage_ms[fail] = p["timeout_ms"]
            elif kind == "error_burst":
                fail = hit & (u < p["error_rate"])
                cols["is_error"] |= fail
                rate_limit_only = p.get("errors") == "rate_limit"  # a 429 storm
                cols["error_type"][fail] = np.where(rate_limit_only | (u[fail] < p["error_rate"] * 0.5),
                                                    RATE_LIMIT, INTERNAL)
            elif kind == "ttft_regression":
                ttft_factor[hit] *= p["factor"]
            elif kind == "finish_length":
                cols["finish_reason"][hit & (u < p["share"])] = FINISH_REASONS.index("length")
            elif kind == "cost_creep":
                grow = (1.0 + p["per_min"]) ** ((t[hit] - inc.start_s) / 60.0)
                cols["input_tokens"][hit] *= grow
                cols["output_tokens"][hit] *= grow
                keep_latency_tokens[hit] = cols["output_tokens"][hit]
            elif kind == "output_collapse":
                cols["output_tokens"][hit] = np.maximum(1.0, p["tokens"] * cols["ttft_noise"][hit])
            elif kind == "new_model":
                to = [q.request_model for q in self.profiles].index(str(p["to"]))
                moved = hit & (u < p["share"])
                cols["model"][moved] = to
                response_model[moved] = self._response_index[self.profiles[to].response_model]
            elif kind == "cost_runaway":
                cols["output_tokens"][hit] = np.clip(cols["output_tokens"][hit] * p["factor"], 1,
                                                     16 * MAX_OUTPUT_TOKENS)
                keep_latency_tokens[hit] = cols["output_tokens"][hit]
            elif kind == "model_swap":
                response_model[hit] = self._response_index[str(p["to"])]
                cols["output_tokens"][hit] = np.maximum(1.0, cols["output_tokens"][hit] * p["output_factor"])
                keep_latency_tokens[hit] = cols["output_tokens"][hit]
            elif kind in ("token_abuse", "abusive_user"):
                hit = cols["incident"] == e.number
            elif kind == "decoupled_latency":
                # Latency is computed from another hit call's output tokens: latency and tokens keep
                # their distributions, their pairing (so tokens/s of a call) is lost.
                moved = np.flatnonzero(hit & (u < p["share"]))
                keep_latency_tokens[moved] = keep_latency_tokens[erng.permutation(moved)]
            elif kind == "empty_answers":
                cols["output_tokens"][hit] = np.maximum(0.0, np.round(p["tokens"] * cols["ttft_noise"][hit] - 0.5))
            elif kind == "hallucination_regression":
                for m in np.unique(cols["model"][hit]):
                    moved = hit & (cols["model"] == m)
                    version = self._version(self.profiles[int(m)].response_model, str(p["version"]))
                    response_model[moved] = self._response_index[version]
            # budget_exhaustion: its extra calls are ordinary calls of the target
            cols["incident"][hit] = e.number
        first = np.array([q.first_token_ms for q in self.profiles])[cols["model"]]
        per_token = np.array([q.ms_per_token for q in self.profiles])[cols["model"]]
        input_tokens = np.round(cols["input_tokens"]).astype(np.int64)
        output_tokens = np.round(cols["output_tokens"]).astype(np.int64)
        prefill = first + _PREFILL_MS_PER_TOKEN * input_tokens
        latency_tokens = np.round(keep_latency_tokens).astype(np.int64)
        latency = (prefill + per_token * latency_tokens) * cols["noise"] * latency_factor
        ttft = np.minimum(prefill * cols["noise"] * cols["ttft_noise"] * latency_factor * ttft_factor, 0.9 * latency)
        ttft = np.where(cols["stream"], ttft, np.nan)
        err = cols["is_error"]
        etype = np.where(err, cols["error_type"], -1)
        fail_latency = np.where(etype == RATE_LIMIT, 120.0 * cols["noise"], first * cols["noise"])
        fail_latency = np.where(np.isnan(outage_ms), fail_latency, outage_ms * cols["ttft_noise"] ** 0.2)
        latency = np.where(err, fail_latency, latency)
        ttft = np.where(err, np.nan, ttft)
        output_tokens = np.where(err, 0, output_tokens)
        batch = CallBatch(t=t, service=cols["service"], model=cols["model"], region=cols["region"], pod=cols["pod"],
                          user=cols["user"], input_tokens=input_tokens, output_tokens=output_tokens,
                          latency_ms=latency, ttft_ms=ttft, is_error=err, error_type=etype.astype(np.int64),
                          finish_reason=np.where(err, -1, cols["finish_reason"]).astype(np.int64),
                          response_model=response_model, incident=cols["incident"],
                          **self._signals(np.random.default_rng([seed, b, 7]), cols, live, err))
        return batch.take(np.flatnonzero(keep)) if not keep.all() else batch

    def _version(self, base: str, suffix: str) -> str:
        """A new version of response model ``base`` (registered on first use)."""
        name = base.rsplit("-20", 1)[0] + suffix if "-20" in base else base + suffix
        if name not in self._response_index:
            self._response_index[name] = len(self.response_models)
            self.response_models.append(name)
        return name

    def _signals(self, rng: np.random.Generator, cols: dict[str, Any], live: list[_Effects],
                 err: BoolArray) -> dict[str, Any]:
        """Evaluation scores, feedback and guardrail events (their own random stream, so scenarios
        without signals draw exactly the calls they drew before)."""
        sc = self.scenario
        n = cols["t"].shape[0]
        t = cols["t"]
        u_eval, u_fb, u_thr = rng.random(n), rng.random(n), rng.random(n)
        mean = np.full(n, CLEAN_EVAL[0])
        happy = np.full(n, CLEAN_SATISFACTION)
        threat = np.where((u_thr < sc.threat_share) & ~err, rng.integers(0, len(THREATS), n), -1)
        ip = np.full(n, -1, dtype=np.int64)
        evaluated = (u_eval < sc.eval_share) & ~err
        for e in live:
            inc, p = e.incident, e.params
            hit = (t >= inc.start_s) & (t < inc.end_s) & self._matches(cols, inc.target)
            if inc.type == "hallucination_regression":
                mean[hit] = p["mean"]
            elif inc.type == "satisfaction_drop":
                happy[hit] = p["satisfaction"]
            elif inc.type == "jailbreak_campaign":
                struck = hit & (rng.random(n) < p["share"])
                threat[struck] = THREATS.index("jailbreak")
                ip[struck] = self._campaign_ip(str(p["ip"]))
            elif inc.type == "abusive_user":
                struck = (cols["incident"] == e.number) & (rng.random(n) < p["threat_share"])
                threat[struck] = THREATS.index("prompt_injection")
        score = np.clip(rng.normal(mean, CLEAN_EVAL[1]), 0.0, 1.0)
        return {"eval_score": np.where(evaluated, score, np.nan),
                "feedback": np.where((u_fb < sc.feedback_share) & ~err, (rng.random(n) < happy).astype(np.int64), -1),
                "threat": threat.astype(np.int64), "ip": ip}

    def _campaign_ip(self, address: str) -> int:
        if address not in self.campaign_ips:
            self.campaign_ips.append(address)
        return self.campaign_ips.index(address)

    # --- spans ---------------------------------------------------------------------------------

    def span_attributes(self, calls: CallBatch, i: int, response_id: str) -> list[tuple[str, Any]]:
        """The span attributes of call ``i`` of ``calls`` (GenAI semantic conventions, current names)."""
        prof = self.profiles[int(calls.model[i])]
        r = int(calls.response_model[i])
        if self.response_models[r] != prof.response_model:
            prof = prof._replace(response_model=self.response_models[r])
        e = int(calls.error_type[i])
        f = int(calls.finish_reason[i])
        attrs = call_attributes("genai", prof, int(calls.input_tokens[i]), int(calls.output_tokens[i]),
                                FINISH_REASONS[f] if f >= 0 else "stop", ERROR_TYPES[e] if e >= 0 else None,
                                response_id)
        attrs.append(("user.id", self.users[int(calls.user[i])]))
        ttft = float(calls.ttft_ms[i])
        if ttft == ttft:  # not NaN: a streamed call
            attrs.append(("gen_ai.request.stream", True))
            attrs.append(("gen_ai.response.time_to_first_chunk", ttft / 1000.0))
        score = float(calls.eval_score[i])
        if score == score:  # not NaN: an LLM-as-judge hallucination score
            attrs.append(("sentinel.eval.hallucination", round(score, 4)))
        fb = int(calls.feedback[i])
        if fb >= 0:
            attrs.append(("sentinel.feedback.label", "thumbs_up" if fb else "thumbs_down"))
        k = int(calls.incident[i])
        if k >= 0:
            attrs.append((INJECTED_ATTRIBUTE, self.scenario.incidents[k].type))
        return attrs

    def span_events(self, calls: CallBatch, i: int, start_unix_nano: int) -> list[tuple[str, int, dict[str, Any]]]:
        """The span events of call ``i``: a guardrail event (``gen_ai.guardrail.<threat>``) when it has one."""
        th = int(calls.threat[i])
        if th < 0:
            return []
        user = self.users[int(calls.user[i])]
        h = zlib.crc32(user.encode())
        k = int(calls.ip[i])
        inc = int(calls.incident[i])
        campaign = k >= 0 or inc >= 0
        attrs: dict[str, Any] = {
            "severity": "high" if campaign else "low", "confidence": 0.75 if campaign else 0.55,
            "detection_method": "classifier", "action_taken": "blocked" if campaign else "flagged", "user_id": user,
            "metadata.ip_address": self.campaign_ips[k] if k >= 0 else
            f"10.{h % 200}.{(h >> 8) % 250}.{(h >> 16) % 250 + 1}"}
        if k >= 0 and inc >= 0:
            attrs["metadata.attack_signature"] = str(self.scenario.incidents[inc].params.get("signature", "campaign"))
        return [(f"gen_ai.guardrail.{THREATS[th]}", start_unix_nano, attrs)]

    def resource_attributes(self, service: int, region: int, pod: int) -> list[tuple[str, Any]]:
        return [("service.name", self.services[service]), ("service.namespace", NAMESPACE),
                ("k8s.namespace.name", NAMESPACE), ("k8s.pod.name", self.pods[service][region][pod]),
                ("k8s.deployment.name", self.services[service]), ("cloud.provider", "aws"),
                ("cloud.region", self.regions[region]), ("telemetry.sdk.language", "python"),
                ("telemetry.sdk.name", "opentelemetry")]

    def span_ids(self, calls: CallBatch) -> bytes:
        """24 bytes per call (trace id, span id): a hash of the call's start time and the seed, so the
        same call gets the same ids however the interval was sliced."""
        if not len(calls):
            return b""
        bits = np.frombuffer(np.ascontiguousarray(calls.t, dtype="<f8").tobytes(), "<u8")
        x = bits ^ np.uint64((self.scenario.seed * 0x9E3779B1) & 0xFFFFFFFFFFFFFFFF)
        words = np.stack([_splitmix64(x + np.uint64(k)) for k in (1, 2, 3)], axis=1)
        return words.astype("<u8").tobytes()

    def requests(self, sim_t0: float, sim_t1: float, start_unix_nano: int, *,
                 calls: CallBatch | None = None) -> dict[str, ExportTraceServiceRequest]:
        """OTLP requests of the calls in ``[sim_t0, sim_t1)``, one per service (that has calls), with a
        ResourceSpans per (region, pod). A call at simulated offset ``t`` starts at
        ``start_unix_nano + t·1e9`` and ends ``latency_ms`` later. ``calls``: already drawn calls."""
        if calls is None:
            calls = self.calls(sim_t0, sim_t1)
        out: dict[str, ExportTraceServiceRequest] = {}
        ids = self.span_ids(calls)
        starts = start_unix_nano + np.round(calls.t * 1e9).astype(np.int64)
        ends = starts + np.round(calls.latency_ms * 1e6).astype(np.int64)
        resources: dict[tuple[int, int, int], Any] = {}
        scopes: dict[tuple[int, int, int, str], Any] = {}
        for i in range(len(calls)):
            s, r, pod = int(calls.service[i]), int(calls.region[i]), int(calls.pod[i])
            prof = self.profiles[int(calls.model[i])]
            scope = scopes.get((s, r, pod, prof.provider))
            if scope is None:
                rs = resources.get((s, r, pod))
                if rs is None:
                    req = out.get(self.services[s])
                    if req is None:
                        req = out[self.services[s]] = ExportTraceServiceRequest()
                    rs = resources[(s, r, pod)] = req.resource_spans.add()
                    for key, value in self.resource_attributes(s, r, pod):
                        set_attribute(rs.resource.attributes.add(), key, value)
                scope = scopes[(s, r, pod, prof.provider)] = rs.scope_spans.add()
                scope.scope.name, scope.scope.version = _SCOPES.get(prof.provider, _SCOPES["openai"])
            span = scope.spans.add()
            span.trace_id = ids[24 * i:24 * i + 16]
            span.span_id = ids[24 * i + 16:24 * i + 24]
            span.kind = Span.SPAN_KIND_CLIENT
            span.name = span_name("genai", prof)
            span.start_time_unix_nano = int(starts[i])
            span.end_time_unix_nano = int(ends[i])
            for key, value in self.span_attributes(calls, i, ids[24 * i:24 * i + 6].hex()):
                set_attribute(span.attributes.add(), key, value)
            for name, at, event_attrs in self.span_events(calls, i, int(starts[i])):
                event = span.events.add()
                event.name, event.time_unix_nano = name, at
                for key, value in event_attrs.items():
                    set_attribute(event.attributes.add(), key, value)
            e = int(calls.error_type[i])
            if e >= 0:
                span.status.code = Status.STATUS_CODE_ERROR
                span.status.message = f"{ERROR_TYPES[e][0]}: HTTP {ERROR_TYPES[e][1]}"
        return out
