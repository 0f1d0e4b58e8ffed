"""The aggregator's detectors: windowed, event-time, per key; each emits :class:`Candidate` s.

Every detector has a config dataclass (named defaults, ``validate()``), ``update(batch)`` returning
the candidates the batch completed, and ``to_state()`` / ``from_state()`` with JSON-able state.
"""

from aggregator.detectors.budget import BudgetConfig, BudgetDetector
from aggregator.detectors.candidate import ANOMALY_TYPES, Candidate
from aggregator.detectors.content_filter import ContentFilterConfig, ContentFilterDetector
from aggregator.detectors.cost_cusum import CostCusumConfig, CostCusumDetector
from aggregator.detectors.drift import DriftConfig, DriftDetector
from aggregator.detectors.empty_answer import EmptyAnswerConfig, EmptyAnswerDetector
from aggregator.detectors.error_burst import ErrorBurstConfig, ErrorBurstDetector
from aggregator.detectors.expensive_prompt import ExpensivePromptConfig, ExpensivePromptDetector
from aggregator.detectors.finish_length import FinishLengthConfig, FinishLengthDetector
from aggregator.detectors.level_shift import LevelShiftConfig, LevelShiftDetector
from aggregator.detectors.model_swap import ModelSwapConfig, ModelSwapDetector
from aggregator.detectors.throughput_drop import ThroughputDropConfig, ThroughputDropDetector
from aggregator.detectors.token_abuse import TokenAbuseConfig, TokenAbuseDetector

__all__ = [
    "ANOMALY_TYPES",
    "BudgetConfig",
    "BudgetDetector",
    "Candidate",
    "ContentFilterConfig",
    "ContentFilterDetector",
    "CostCusumConfig",
    "CostCusumDetector",
    "DriftConfig",
    "DriftDetector",
    "EmptyAnswerConfig",
    "EmptyAnswerDetector",
    "ErrorBurstConfig",
    "ErrorBurstDetector",
    "ExpensivePromptConfig",
    "ExpensivePromptDetector",
    "FinishLengthConfig",
    "FinishLengthDetector",
    "LevelShiftConfig",
    "LevelShiftDetector",
    "ModelSwapConfig",
    "ModelSwapDetector",
    "ThroughputDropConfig",
    "ThroughputDropDetector",
    "TokenAbuseConfig",
    "TokenAbuseDetector",
]
