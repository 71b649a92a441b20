"""Image formation: tissue labels -> MR-like 16-bit pixels.

Contrast per sequence (fat bright on T1 and T2, dark on STIR; fluid bright on T2/STIR, dark
on T1), a point-spread blur, a smooth multiplicative coil bias field, Rician noise and a
per-series intensity scale stored as unsigned 12- or 16-bit integers.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter

from spinepipe.geometry import SlicePlane
from spinepipe.synth.anatomy import SpineAnatomy, Tissue

# Relative signal of each tissue: (T1, T2, STIR)
SIGNAL: dict[Tissue, tuple[float, float, float]] = {
    Tissue.AIR: (0.0, 0.0, 0.0),
    Tissue.SOFT: (0.38, 0.30, 0.32),
    Tissue.FAT: (0.95, 0.62, 0.08),
    Tissue.MUSCLE: (0.30, 0.20, 0.22),
    Tissue.MARROW: (0.68, 0.42, 0.14),
    Tissue.CORTEX: (0.05, 0.04, 0.04),
    Tissue.NUCLEUS: (0.32, 0.85, 0.90),
    Tissue.ANNULUS: (0.24, 0.16, 0.18),
    Tissue.CSF: (0.14, 1.00, 1.00),
    Tissue.LIGAMENT: (0.10, 0.08, 0.08),
    Tissue.NERVE: (0.36, 0.32, 0.30),
}
CONTRASTS = ("T1", "T2", "STIR")
_LOOKUP = np.array([[SIGNAL[t][c] for c in range(3)] for t in Tissue], dtype=np.float32)


class BiasField:
    """Smooth multiplicative field over patient space (one per series: the coil)."""

    def __init__(self, rng: np.random.Generator, center: NDArray[np.float64]) -> None:
        self.center = center
        self.linear = rng.uniform(-0.25, 0.25, 3) / 150.0
        self.quadratic = rng.uniform(0.0, 0.3) / 150.0**2

    def __call__(self, points: NDArray[np.float64]) -> NDArray[np.float64]:
        d = points - self.center
        return np.exp(d @ self.linear - self.quadratic * np.sum(d * d, axis=-1))


def render_slice(anatomy: SpineAnatomy, plane: SlicePlane, rows: int, columns: int,
                 contrast: str, bias: BiasField, noise: float,
                 rng: np.random.Generator) -> NDArray[np.float32]:
    """Relative signal (about 0..1) of one slice."""
    points = plane.grid(rows, columns).reshape(-1, 3)
    tissue, hydration = anatomy.classify(points)
    c = CONTRASTS.index(contrast)
    signal = _LOOKUP[tissue, c]
    nucleus = tissue == Tissue.NUCLEUS
    annulus = _LOOKUP[Tissue.ANNULUS, c]
    signal[nucleus] = annulus + hydration[nucleus] * (signal[nucleus] - annulus)
    image = signal.reshape(rows, columns) * bias(points).reshape(rows, columns)
    image = gaussian_filter(image, sigma=0.7 / plane.pixel_spacing[0] + 0.3)
    real = image + rng.normal(0.0, noise, image.shape)
    imag = rng.normal(0.0, noise, image.shape)
    return np.sqrt(real**2 + imag**2).astype(np.float32)


def to_stored(image: NDArray[np.float32], scale: float, bits_stored: int) -> NDArray[np.uint16]:
    """Scale relative signal to unsigned integers that fit ``bits_stored``."""
    return np.clip(np.rint(image * scale), 0, 2**bits_stored - 1).astype(np.uint16)
