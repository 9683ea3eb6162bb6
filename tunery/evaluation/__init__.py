"""Evaluation: task files and metrics, greedy generation, loss/perplexity, comparisons, gates, reports.

Entry points: `evaluate_model` (one model on a task file) and `compare_models` (a baseline and
candidates, with an offline HTML report and promotion gates).
"""

from tunery.evaluation.compare import Comparison, Summary, compare_models
from tunery.evaluation.evaluate import EvalResult, evaluate_model, evaluate_model_loss
from tunery.evaluation.gates import GateResult, parse_gate
from tunery.evaluation.judge import JudgeSpec

__all__ = ["Comparison", "EvalResult", "GateResult", "JudgeSpec", "Summary", "compare_models",
           "evaluate_model", "evaluate_model_loss", "parse_gate"]
