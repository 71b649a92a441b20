"""Drawing the 25 condition-level labels of a study, and the narrowing that shows them.

Labels follow an ordinal probit model: a per-study degeneration factor shared by all of a
study's labels (correlation ``rho``) plus independent noise, cut at thresholds chosen so
that each label's marginal distribution is exactly its configured prior.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import norm

from spinepipe.constants import CONDITION_FAMILY, CONDITION_SIDE, CONDITIONS, LEVELS
from spinepipe.synth.anatomy import Pathology

# Narrowing fraction drawn for each severity class: well separated, with spread inside.
SEVERITY_NARROWING: tuple[tuple[float, float], ...] = ((0.0, 0.25), (0.4, 0.6), (0.7, 0.9))

Priors = Mapping[str, Mapping[str, Sequence[float]]]


def sample_labels(priors: Priors, correlation: float,
                  rng: np.random.Generator) -> dict[tuple[str, str], int]:
    """One study's severity class (0, 1, 2) for every (condition, level)."""
    shared = rng.standard_normal()
    labels: dict[tuple[str, str], int] = {}
    for condition in CONDITIONS:
        for level in LEVELS:
            probs = np.asarray(priors[CONDITION_FAMILY[condition]][level], dtype=float)
            cuts = norm.ppf(np.cumsum(probs)[:2] / probs.sum())
            score = correlation * shared + np.sqrt(1 - correlation**2) * rng.standard_normal()
            labels[(condition, level)] = int(score > cuts[0]) + int(score > cuts[1])
    return labels


def pathology_from_labels(labels: Mapping[tuple[str, str], int],
                          rng: np.random.Generator) -> Pathology:
    """Narrowing of each structure at each graded disc, drawn within its severity band."""
    path = Pathology()
    for (condition, level), severity in labels.items():
        low, high = SEVERITY_NARROWING[severity]
        fraction = rng.uniform(low, high)
        k = LEVELS.index(level)
        family, side = CONDITION_FAMILY[condition], CONDITION_SIDE[condition]
        if family == "spinal":
            path.spinal[k] = fraction
        else:
            target = path.foraminal if family == "foraminal" else path.subarticular
            target[0 if side == "left" else 1][k] = fraction
    # degenerated discs lose water (darker nucleus on T2), more where the canal narrows
    worst = np.maximum(path.spinal, path.foraminal.mean(axis=0))
    path.hydration = np.clip(1.0 - 0.8 * worst + rng.normal(0, 0.08, worst.shape), 0.1, 1.0)
    return path
