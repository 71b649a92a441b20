"""A study's true severities, a reader's grades of them, and the narrowing the images show.

* **True severity**: every graded structure (condition x level) has a continuous latent
  severity ``z ~ N(0, 1)``, a per-study degeneration factor shared by all of the study's
  structures (correlation ``rho``) plus independent noise.
* **Image**: the structure's narrowing fraction is a monotone function of ``z`` alone
  (:func:`narrowing_fraction`): the images show the true severity, never the label.
* **Grade**: the label in the CSVs is a reader's call on ``z``, an ordinal probit with reader
  noise ``sigma``: the grade counts the cuts ``c_k`` below ``z + sigma * e``, ``e ~ N(0, 1)``.
  The cuts are ``c_k = sqrt(1 + sigma^2) * t_k`` with ``t_k`` the prior's normal quantiles, so
  each label's marginal distribution is exactly its configured prior whatever ``sigma``. Two
  equally good readers (same ``sigma``, independent ``e``) disagree on borderline structures;
  ``P(grade | z)`` is known exactly (:func:`grade_probabilities`), which gives the score no
  predictor can beat on average (:mod:`spinepipe.bayes_floor`).

The reader's noise comes from its own random stream (:data:`READER_STREAM`), so changing
``sigma`` changes labels and never an image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import norm

from spinepipe.constants import CONDITION_FAMILY, CONDITION_SIDE, CONDITIONS, LEVELS
from spinepipe.synth.anatomy import Pathology

# Narrowing fraction shown at z = -inf, at the noise-free cuts t_1 and t_2, and at z = +inf:
# within each of the three stretches the narrowing is linear in Phi(z), so the structures a
# noise-free reader would call Normal/Mild spread evenly over 0 .. 0.325, and so on.
NARROWING_EDGES: tuple[float, float, float, float] = (0.0, 0.325, 0.65, 0.9)

#: Random stream (``layout.study_rng``'s ``stream``) of the reader's noise, apart from the
#: stream that draws the anatomy and the images.
READER_STREAM = 2

Priors = Mapping[str, Mapping[str, Sequence[float]]]
Key = tuple[str, str]


def _prior(priors: Priors, condition: str, level: str) -> NDArray[np.float64]:
    probs = np.asarray(priors[CONDITION_FAMILY[condition]][level], dtype=np.float64)
    return probs / probs.sum()


def noise_free_cuts(prior: ArrayLike) -> NDArray[np.float64]:
    """The two cuts ``t_k`` on ``z ~ N(0, 1)`` that split it into the prior's three classes."""
    prior = np.asarray(prior, dtype=np.float64)
    return norm.ppf(np.cumsum(prior)[:2] / prior.sum())


def reader_cuts(prior: ArrayLike, noise: float) -> NDArray[np.float64]:
    """The reader's cuts on ``z``: ``z + noise * e`` is ``N(0, 1 + noise^2)``, so scaling the
    noise-free cuts by its standard deviation keeps the label frequencies at the prior."""
    return np.sqrt(1.0 + noise**2) * noise_free_cuts(prior)


def grade_probabilities(severity: ArrayLike, cuts: ArrayLike, noise: float) -> NDArray[np.float64]:
    """``P(grade = 0, 1, 2 | z)`` for true severities ``severity`` (shape ``(n,)``) and their
    cuts (shape ``(n, 2)`` or ``(2,)``); shape ``(n, 3)``. With ``noise`` 0 the grade is
    certain (one-hot)."""
    z = np.atleast_1d(np.asarray(severity, dtype=np.float64))[:, None]
    cuts = np.broadcast_to(np.asarray(cuts, dtype=np.float64), (z.shape[0], 2))
    above = (z > cuts).astype(np.float64) if noise == 0 else norm.cdf((z - cuts) / noise)
    return np.column_stack([1.0 - above[:, 0], above[:, 0] - above[:, 1], above[:, 1]])


def sample_true_severities(correlation: float, rng: np.random.Generator) -> dict[Key, float]:
    """One study's latent true severity ``z`` of every (condition, level)."""
    shared = rng.standard_normal()
    return {(condition, level): float(correlation * shared
                                      + np.sqrt(1 - correlation**2) * rng.standard_normal())
            for condition in CONDITIONS for level in LEVELS}


def read_grades(severities: Mapping[Key, float], priors: Priors, noise: float,
                rng: np.random.Generator) -> dict[Key, int]:
    """A reader's grade (0, 1, 2) of every structure; ``rng`` is the reader's own stream."""
    grades = {}
    for (condition, level), z in severities.items():
        called = z + noise * rng.standard_normal()
        cuts = reader_cuts(_prior(priors, condition, level), noise)
        grades[(condition, level)] = int(called > cuts[0]) + int(called > cuts[1])
    return grades


def severity_table(severities: Mapping[Key, float], priors: Priors,
                   noise: float) -> list[dict[str, float | str]]:
    """Per structure: its true severity, the narrowing shown and ``P(grade | z)`` of a reader
    with this noise (rows of the ground-truth file ``grade_probabilities.csv``)."""
    rows: list[dict[str, float | str]] = []
    for (condition, level), z in severities.items():
        prior = _prior(priors, condition, level)
        probs = grade_probabilities([z], reader_cuts(prior, noise), noise)[0]
        rows.append({"condition": condition, "level": level, "true_severity": z,
                     "narrowing": narrowing_fraction(z, prior),
                     "p_normal_mild": probs[0], "p_moderate": probs[1], "p_severe": probs[2]})
    return rows


def narrowing_fraction(severity: float, prior: ArrayLike) -> float:
    """The narrowing an image shows for true severity ``severity`` (independent of the reader):
    ``NARROWING_EDGES`` at the noise-free cuts, linear in ``Phi(z)`` between them."""
    knots_u = np.concatenate([[0.0], norm.cdf(noise_free_cuts(prior)), [1.0]])
    return float(np.interp(norm.cdf(severity), knots_u, NARROWING_EDGES))


def pathology_from_severities(severities: Mapping[Key, float], priors: Priors,
                              rng: np.random.Generator) -> Pathology:
    """Narrowing of each structure at each graded disc, from its true severity."""
    path = Pathology()
    for (condition, level), z in severities.items():
        fraction = narrowing_fraction(z, _prior(priors, condition, level))
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
