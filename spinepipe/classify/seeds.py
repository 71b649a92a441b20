"""Spread of the evaluation over training seeds (``train.seeds``, rule ``seeds_summary``).

The master seed's run (``results/eval/cv.json``) and each further seed's
(``results/seeds/<seed>/eval/cv.json``) differ only in the severity classifiers' training:
initial weights, sample order, augmentation and jitter draws. Data, folds, localization and
crops are shared, so the spread measured here is training noise on a fixed data set.

Figures (:data:`HEADLINE_FIGURES`, and each term of :data:`HEADLINE_GROUPS` as
``group.term``) are taken from every run that has them. A figure missing from a run, or
not a finite number there (``null``, NaN), is reported over the runs that have it: its
``n`` counts them and ``missing`` lists the seeds without it, so a seed is never silently
counted as a value. ``sd`` is the sample standard deviation (ddof=1), ``null`` when fewer
than two runs have the figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

# Single figures of cv.json (spinepipe.classify.end_to_end.evaluate_cv, then cv_report):
# the end-to-end CV (the headline), the classifier-only CV on annotated points, the CV before
# temperature scaling, their difference, the test score; on synthetic data also the share of
# the gap between the prior and the Bayes floor each score closes (the prior and the floor
# themselves are the same for every seed).
HEADLINE_FIGURES = ("cv_score", "cv_score_annotated_points", "cv_score_uncalibrated",
                    "localization_cost", "test_score", "gap_closed", "test_gap_closed")
# Mappings of cv.json whose every term is summarized as "group.term": the metric's terms
# (spinal, foraminal, subarticular, any_severe_spinal) end to end, on annotated points and on
# test, and the end-to-end score per condition.
HEADLINE_GROUPS = ("cv_terms", "cv_terms_annotated_points", "test_terms", "per_condition")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def headline_figures(cv: Mapping[str, Any]) -> dict[str, float | None]:
    """The headline figures a cv.json holds, flattened (``group.term`` for the groups); a
    present but non-numeric or non-finite value maps to None."""
    figures: dict[str, float | None] = {}
    for name in HEADLINE_FIGURES:
        if name in cv:
            figures[name] = _number(cv[name])
    for group in HEADLINE_GROUPS:
        terms = cv.get(group)
        if isinstance(terms, Mapping):
            for term, value in terms.items():
                figures[f"{group}.{term}"] = _number(value)
    return figures


def summarize_seeds(runs: Mapping[int, Mapping[str, Any]], master_seed: int | None = None
                    ) -> dict[str, Any]:
    """Mean and spread of every headline figure over the runs, one cv.json dict per seed
    (the master seed's included). Returns ``{"master_seed", "seeds", "figures"}`` where each
    figure is ``{"n", "mean", "sd", "min", "max", "values": {seed: value}, "missing":
    [seeds]}``, seeds as strings (JSON keys) in the order of ``runs``."""
    if not runs:
        raise ValueError("summarize_seeds: no runs")
    per_run = {int(seed): headline_figures(cv) for seed, cv in runs.items()}
    names: list[str] = []
    for figures in per_run.values():
        names += [name for name in figures if name not in names]
    summary: dict[str, Any] = {}
    for name in names:
        values = {str(seed): figures[name] for seed, figures in per_run.items()
                  if figures.get(name) is not None}
        present = np.array(list(values.values()), dtype=np.float64)
        summary[name] = {
            "n": len(present),
            "mean": float(present.mean()) if len(present) else None,
            "sd": float(present.std(ddof=1)) if len(present) > 1 else None,
            "min": float(present.min()) if len(present) else None,
            "max": float(present.max()) if len(present) else None,
            "values": values,
            "missing": [seed for seed, figures in per_run.items() if figures.get(name) is None],
        }
    return {"master_seed": master_seed, "seeds": list(per_run), "figures": summary}


def summary_line(summary: Mapping[str, Any],
                 names: tuple[str, ...] = ("cv_score", "cv_score_annotated_points", "test_score")
                 ) -> str:
    """One human line: mean +/- sd [min, max] (n) of the main figures."""
    parts = []
    for name in names:
        figure = summary["figures"].get(name)
        if not figure or not figure["n"]:
            continue
        sd = "n/a" if figure["sd"] is None else f"{figure['sd']:.4f}"
        parts.append(f"{name} {figure['mean']:.4f} +/- {sd} sd [{figure['min']:.4f}, "
                     f"{figure['max']:.4f}] (n={figure['n']})")
    return f"{len(summary['seeds'])} seeds {summary['seeds']}: " + "; ".join(parts)
