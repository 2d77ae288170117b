"""Evaluation: retrieval metrics (P@K, mAP@K, MAP) and classification probes."""

from commonspace.eval.probe import classification_map, logistic_probe, logistic_probe_many, mlp_probe
from commonspace.eval.retrieval import METRICS, cross_modal_retrieval, retrieval_metrics, similarity
from commonspace.eval.robustness import robustness

__all__ = [
    "METRICS",
    "classification_map",
    "cross_modal_retrieval",
    "logistic_probe",
    "logistic_probe_many",
    "mlp_probe",
    "retrieval_metrics",
    "robustness",
    "similarity",
]
