"""Token abuse: a user (or API key) using far more tokens in a window than the peers of its service.

Input plus output tokens (NaN = 0) are summed per (service, user, api key hash) in tumbling
event-time windows of ``window_s`` (closed by the watermark, see :mod:`aggregator.analysis.detectors.buckets`;
every key of a window closes in the same call). Per service and window, the peers are the
identities with tokens in that window (rows with neither user nor api key hash are not counted);
with at least ``min_peers`` of them, an identity is abusive when its total is above ``k`` × the
median of the peers' totals (the median includes it, so one abuser cannot lift it) and at least
``min_total_tokens``. Once per excursion per identity; re-armed by a window that is not abusive.

Per-identity history: with heavy users (Zipf traffic) the head user of a service is routinely tens
of times the median user, so the peer rule alone flags ordinary heavy users. Each identity keeps its
own baseline, the EWMA (weight ``own_alpha``) of its totals in the windows it had tokens, learned
from its first ``own_warmup`` such windows on. An identity with that much history is abusive only
when it is **both** above ``k`` × the peer median **and** above ``own_k`` × its own baseline (judged
against its own past and its peers); one without (a new user or key, or a fresh aggregator) by the
peer rule alone — except during a service's own first ``own_warmup`` windows, when every identity
is new and the heavy users would all read as abusers (nothing is flagged then). Windows flagged as
abusive do not update the identity's baseline, so a long abuse is not learned as its normal.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggregator.analysis.detectors.buckets import BucketedDetector
from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.detectors.keys import Key
from aggregator.analysis.detectors.validation import check_fraction, check_min, check_positive
from sentinel.model import FeatureBatch

__all__ = ["TokenAbuseConfig", "TokenAbuseDetector"]

NAME = "token_abuse"
DEFAULT_WINDOW_S = 300.0
DEFAULT_LATENESS_S = 30.0
DEFAULT_K = 10.0
DEFAULT_MIN_TOTAL_TOKENS = 50_000.0
DEFAULT_MIN_PEERS = 3
#: An identity with history must also exceed this multiple of its own baseline.
DEFAULT_OWN_K = 4.0
DEFAULT_OWN_WARMUP = 3
DEFAULT_OWN_ALPHA = 0.2
DEFAULT_MAX_KEYS = 100_000
KEY_COLUMNS = ("service", "user", "api_key_hash")


@dataclass(frozen=True, kw_only=True)
class TokenAbuseConfig:
    """Settings of ``detectors.token_abuse``."""

    window_s: float = DEFAULT_WINDOW_S
    lateness_s: float = DEFAULT_LATENESS_S
    k: float = DEFAULT_K
    min_total_tokens: float = DEFAULT_MIN_TOTAL_TOKENS
    min_peers: int = DEFAULT_MIN_PEERS
    own_k: float = DEFAULT_OWN_K
    own_warmup: int = DEFAULT_OWN_WARMUP
    own_alpha: float = DEFAULT_OWN_ALPHA
    max_keys: int = DEFAULT_MAX_KEYS

    def validate(self) -> TokenAbuseConfig:
        check_positive(NAME, "window_s", self.window_s)
        check_min(NAME, "lateness_s", self.lateness_s, 0)
        check_min(NAME, "k", self.k, 1)
        check_min(NAME, "min_total_tokens", self.min_total_tokens, 0)
        check_min(NAME, "min_peers", self.min_peers, 2)
        check_min(NAME, "own_k", self.own_k, 1)
        check_min(NAME, "own_warmup", self.own_warmup, 0)
        check_fraction(NAME, "own_alpha", self.own_alpha)
        check_min(NAME, "max_keys", self.max_keys, 1)
        return self


class _KeyState:
    __slots__ = ("armed", "base", "n")

    def __init__(self) -> None:
        self.armed = True
        self.n = 0  # windows with tokens learned into ``base``
        self.base = 0.0  # the identity's own tokens per window (mean, then EWMA)

    def learn(self, total: float, alpha: float) -> None:
        self.n += 1
        self.base += (total - self.base) * max(alpha, 1.0 / self.n)

    def to_state(self) -> dict[str, Any]:
        return {"armed": self.armed, "n": self.n, "base": self.base}

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> _KeyState:
        st = cls()
        st.armed = bool(d["armed"])
        st.n, st.base = int(d.get("n", 0)), float(d.get("base", 0.0))
        return st


class TokenAbuseDetector(BucketedDetector[TokenAbuseConfig, _KeyState]):
    """Tokens per (user, api key) and window against the median of the service's users."""

    NAME = NAME
    CONFIG = TokenAbuseConfig
    KEY_STATE = _KeyState
    N_FIELDS = 3  # calls, input tokens, output tokens
    WIDTH = "window_s"

    def __init__(self, config: TokenAbuseConfig | None = None) -> None:
        super().__init__(config)
        self._service_windows: dict[str | None, int] = {}  # closed windows per service

    def update(self, batch: FeatureBatch) -> list[Candidate]:
        c = self.config
        if batch.n:
            tin = np.nan_to_num(np.asarray(batch.numeric["input_tokens"], dtype=np.float64))
            tout = np.nan_to_num(np.asarray(batch.numeric["output_tokens"], dtype=np.float64))
            self._keys.add(batch, KEY_COLUMNS, [np.ones(batch.n), tin, tout], tin + tout)
        windows: dict[tuple[str | None, int], list[tuple[Key, _KeyState, list[float], list[str]]]] = defaultdict(list)
        for key, st, idx, sums, examples in self._keys.close():
            if key[1] is None and key[2] is None:
                continue
            if sums[1] + sums[2] > 0:
                windows[(key[0], idx)].append((key, st, sums, examples))
            else:
                st.armed = True
        out: list[Candidate] = []
        for (service, idx), peers in sorted(windows.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
            seen = self._service_windows.get(service, 0)
            self._service_windows[service] = seen + 1
            totals = np.array([s[1] + s[2] for _, _, s, _ in peers])
            median = float(np.median(totals))
            threshold = max(c.k * median, c.min_total_tokens)
            for (key, st, (calls, n_in, n_out), examples), total in zip(peers, totals.tolist(), strict=True):
                known = st.n >= c.own_warmup
                abusive = (seen >= c.own_warmup and len(peers) >= c.min_peers and total > c.k * median
                           and total >= c.min_total_tokens and (not known or total > c.own_k * st.base))
                if not abusive:
                    st.learn(total, c.own_alpha)
                    st.armed = True
                    continue
                if not st.armed:
                    continue
                st.armed = False
                start, end = self._keys.window(idx)
                out.append(Candidate(
                    anomaly_type="token_abuse", service=service, model=None,
                    detection_method="peer_median+own_history" if known else "peer_median",
                    confidence=min(1.0, total / (2 * threshold)), metric="tokens", value=total, baseline=median,
                    threshold=threshold, deviation_sigma=float("nan"), window_start=start, window_end=end,
                    context={"trace_ids": examples, "user": key[1], "api_key_hash": key[2], "calls": int(calls),
                             "input_tokens": n_in, "output_tokens": n_out, "peers": len(peers), "k": c.k,
                             "own_baseline": st.base if known else None, "own_k": c.own_k,
                             "window_s": c.window_s}))
        return out

    def to_state(self) -> dict[str, Any]:
        return {**super().to_state(), "service_windows": [[k, n] for k, n in self._service_windows.items()]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], config: TokenAbuseConfig | None = None) -> TokenAbuseDetector:
        det = super().from_state(state, config)
        det._service_windows = {k: int(n) for k, n in state.get("service_windows", [])}
        return det
