"""The aggregator's detectors: windowed, event-time, per key; each emits :class:`Candidate` s.

Every detector has a config dataclass (named defaults, ``validate()``), ``update(batch)`` returning
the candidates the batch completed, and ``to_state()`` / ``from_state()`` with JSON-able state.
"""

from aggregator.analysis.detectors.budget import BudgetConfig, BudgetDetector
from aggregator.analysis.detectors.candidate import ANOMALY_TYPES, Candidate
from aggregator.analysis.detectors.content_filter import ContentFilterConfig, ContentFilterDetector
from aggregator.analysis.detectors.cost_cusum import CostCusumConfig, CostCusumDetector
from aggregator.analysis.detectors.drift import DriftConfig, DriftDetector
from aggregator.analysis.detectors.empty_answer import EmptyAnswerConfig, EmptyAnswerDetector
from aggregator.analysis.detectors.error_burst import ErrorBurstConfig, ErrorBurstDetector
from aggregator.analysis.detectors.expensive_prompt import ExpensivePromptConfig, ExpensivePromptDetector
from aggregator.analysis.detectors.finish_length import FinishLengthConfig, FinishLengthDetector
from aggregator.analysis.detectors.level_shift import LevelShiftConfig, LevelShiftDetector
from aggregator.analysis.detectors.model_swap import ModelSwapConfig, ModelSwapDetector
from aggregator.analysis.detectors.throughput_drop import ThroughputDropConfig, ThroughputDropDetector
from aggregator.analysis.detectors.token_abuse import TokenAbuseConfig, TokenAbuseDetector

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
