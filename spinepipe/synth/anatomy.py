"""A 3D lumbar spine phantom in patient coordinates (DICOM LPS, mm).

The spine is described in its own frame (u: toward patient left, v: posterior, along: a
superior coordinate) around a lordotic centreline through the vertebral body centres, then
placed in the patient by a small rigid rotation and a translation. Tissues are painted by
simple implicit shapes; each labelled pathology narrows the structure a radiologist grades:

- spinal canal stenosis: the CSF column is pinched at the disc level (disc bulge in front,
  ligamentum flavum behind), visible on sagittal T2 and axial T2;
- neural foraminal narrowing: the fat-filled foramen on that side shrinks (bright on T1);
- subarticular stenosis: the lateral recess on that side fills with soft tissue (axial T2).

Ground truth: a level centre is the centre of the spinal canal at the middle of the disc;
the foramina lie ``foramen_offset`` mm and the recesses ``recess_offset`` mm from it along
the lateral axis (toward patient left for the left side).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
from numpy.typing import NDArray

from spinepipe.constants import LEVELS

# Disc order in the anatomy: the five graded levels then two thoracolumbar discs above them.
N_DISCS = 7


class Tissue(IntEnum):
    AIR = 0
    SOFT = 1
    FAT = 2
    MUSCLE = 3
    MARROW = 4
    CORTEX = 5
    NUCLEUS = 6
    ANNULUS = 7
    CSF = 8
    LIGAMENT = 9
    NERVE = 10


def rotation_matrix(rx_deg: float, ry_deg: float, rz_deg: float) -> NDArray[np.float64]:
    """Rotation about x, then y, then z (degrees)."""
    ax, ay, az = np.deg2rad([rx_deg, ry_deg, rz_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class Pathology:
    """Narrowing fraction (0 none .. ~0.9 severe) of each structure at each disc."""

    spinal: NDArray[np.float64] = field(default_factory=lambda: np.zeros(N_DISCS))
    foraminal: NDArray[np.float64] = field(default_factory=lambda: np.zeros((2, N_DISCS)))
    subarticular: NDArray[np.float64] = field(default_factory=lambda: np.zeros((2, N_DISCS)))
    hydration: NDArray[np.float64] = field(default_factory=lambda: np.ones(N_DISCS))


@dataclass(frozen=True)
class _Where:
    """Where each point being classified lies: spine-frame coordinates (u lateral, v
    anterior-posterior, along the spine, y the curved centreline's), its nearest disc, the
    distance from it along the spine and that disc's half height."""

    u: NDArray
    v: NDArray
    along: NDArray
    y: NDArray
    disc: NDArray
    dz: NDArray
    half: NDArray


@dataclass
class SpineAnatomy:
    """One study's phantom: shape parameters, placement and pathology."""

    rotation: NDArray[np.float64]
    translation: NDArray[np.float64]
    disc_along: NDArray[np.float64]      # (N_DISCS,) centre of each disc on the centreline
    disc_height: NDArray[np.float64]     # (N_DISCS,)
    lordosis: float                      # depth of the lordotic curve (mm)
    apex: float                          # along-coordinate of the most anterior point
    body_radii: tuple[float, float]      # vertebral body (lateral, AP) half-axes
    canal_radii: tuple[float, float]     # spinal canal (lateral, AP) half-axes
    canal_offset: float                  # AP distance from body centre to canal centre
    foramen_offset: float                # lateral distance canal centre -> foramen centre
    foramen_radii: tuple[float, float]   # foramen (AP, cranio-caudal) half-axes
    recess_offset: float                 # lateral distance canal centre -> recess centre
    body_outline: tuple[float, float, float]  # half-width, anterior extent, posterior extent
    fat_thickness: float
    pathology: Pathology

    CURVE_SCALE = 100.0

    # --- centreline ----------------------------------------------------------------------
    # Parabolic lordosis over the lumbar discs, continued in straight lines above and below.
    def _clamped(self, along: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.clip(along, self.disc_along[4] - 20.0, self.disc_along[0] + 20.0)

    def _slope(self, along: NDArray[np.float64]) -> NDArray[np.float64]:
        return 2.0 * self.lordosis * (self._clamped(along) - self.apex) / self.CURVE_SCALE**2

    def _curve(self, along: NDArray[np.float64]) -> NDArray[np.float64]:
        t = self._clamped(along)
        return self.lordosis * ((t - self.apex) / self.CURVE_SCALE) ** 2 + self._slope(t) * (along - t)

    def _curvature(self, along: NDArray[np.float64]) -> NDArray[np.float64]:
        inside = self._clamped(along) == along
        return np.where(inside, 2.0 * self.lordosis / self.CURVE_SCALE**2, 0.0)

    def to_spine_frame(self, points: NDArray[np.float64]) -> tuple[NDArray, ...]:
        """Patient points (N, 3) -> (lateral u, AP v, along, straight y) in the spine frame."""
        local = (points - self.translation) @ self.rotation
        x, y, z = local[:, 0], local[:, 1], local[:, 2]
        along = z.copy()
        for _ in range(3):  # Newton steps towards the foot of the perpendicular on the curve
            dy = self._curve(along) - y
            slope = self._slope(along)
            along -= ((along - z) + dy * slope) / (1.0 + slope**2 + dy * self._curvature(along))
        slope = self._slope(along)
        v = ((y - self._curve(along)) - slope * (z - along)) / np.sqrt(1.0 + slope**2)
        return x, v, along, y

    def _spine_point(self, along: float, u: float, v: float) -> NDArray[np.float64]:
        slope = float(self._slope(np.array(along)))
        norm = np.sqrt(1.0 + slope**2)
        ap = np.array([0.0, 1.0, -slope]) / norm
        local = np.array([u, float(self._curve(np.array(along))), along]) + v * ap
        return self.rotation @ local + self.translation

    # --- ground truth --------------------------------------------------------------------
    def level_center(self, level_index: int) -> NDArray[np.float64]:
        """Centre of the spinal canal at the middle of a graded disc (patient mm)."""
        return self._spine_point(self.disc_along[level_index], 0.0, self.canal_offset)

    def disc_normal(self, level_index: int) -> NDArray[np.float64]:
        """Unit normal of the disc plane, pointing superior (patient frame)."""
        slope = float(self._slope(np.array(self.disc_along[level_index])))
        tangent = np.array([0.0, slope, 1.0]) / np.sqrt(1.0 + slope**2)
        return self.rotation @ tangent

    @property
    def lateral_axis(self) -> NDArray[np.float64]:
        """Unit vector toward the patient's left in the spine frame (patient coordinates)."""
        return self.rotation @ np.array([1.0, 0.0, 0.0])

    def structure_center(self, level_index: int, structure: str, side: str) -> NDArray:
        """Centre of the canal ('spinal'), a foramen or a recess at a graded level."""
        centre = self.level_center(level_index)
        if structure == "spinal":
            return centre
        sign = {"left": 1.0, "right": -1.0}[side]
        offset = self.foramen_offset if structure == "foraminal" else self.recess_offset
        return centre + sign * offset * self.lateral_axis

    # --- tissue model --------------------------------------------------------------------
    def classify(self, points: NDArray[np.float64]) -> tuple[NDArray[np.uint8], NDArray]:
        """Tissue label of each patient point (N, 3), and the disc hydration there. Tissues
        are painted in order, each over what the ones before it left."""
        u, v, along, y = self.to_spine_frame(points)
        n = len(u)
        tissue = np.zeros(n, dtype=np.uint8)
        dz_all = along[:, None] - self.disc_along[None, :]
        disc = np.argmin(np.abs(dz_all), axis=1)
        where = _Where(u, v, along, y, disc, dz_all[np.arange(n), disc], self.disc_height[disc] / 2.0)
        self._paint_outline(tissue, where)
        self._paint_posterior_elements(tissue, where)
        self._paint_bodies_and_discs(tissue, where)
        self._paint_foramina(tissue, where)
        self._paint_canal(tissue, where)
        self._paint_recesses(tissue, where)
        return tissue, self.pathology.hydration[disc]

    def _paint_outline(self, tissue: NDArray[np.uint8], p: _Where) -> None:
        """Body outline and subcutaneous fat (straight, around the mid-lumbar centreline), the back muscles and the psoas."""
        u, v, along, y = p.u, p.v, p.along, p.y
        half_width, anterior, posterior = self.body_outline
        mid = (posterior - anterior) / 2.0
        ap_half = (posterior + anterior) / 2.0
        straight_v = y - float(self._curve(np.array(self.apex)))
        outline = np.sqrt((u / half_width) ** 2 + ((straight_v - mid) / ap_half) ** 2)
        tissue[outline < 1.0] = Tissue.SOFT
        tissue[(outline < 1.0) & (outline > 1.0 - self.fat_thickness / ap_half)] = Tissue.FAT
        rbx, rby = self.body_radii
        rcu, rcv = self.canal_radii
        vc = self.canal_offset
        inner = outline < 1.0 - self.fat_thickness / ap_half
        erector = ((np.abs(u) - 24) / 22) ** 2 + ((v - vc - rcv - 26) / 26) ** 2 < 1.0
        tissue[inner & erector] = Tissue.MUSCLE
        psoas = ((np.abs(u) - rbx - 14) / 13) ** 2 + (v / 17) ** 2 < 1.0
        tissue[psoas & (along < self.disc_along[3])] = Tissue.MUSCLE

    def _paint_posterior_elements(self, tissue: NDArray[np.uint8], p: _Where) -> None:
        """Pedicles, laminae and the spinous process."""
        u, v, dz, half = p.u, p.v, p.dz, p.half
        rbx, rby = self.body_radii
        rcu, rcv = self.canal_radii
        vc = self.canal_offset
        posterior_ring = (v > rby - 2) & (v < vc + rcv + 7) & (np.abs(u) < rcu + 9)
        tissue[posterior_ring] = Tissue.MARROW
        spinous = (np.abs(u) < 4) & (v >= vc + rcv + 7) & (v < vc + rcv + 35)
        tissue[spinous] = np.where(np.abs(dz[spinous]) < half[spinous] + 2,
                                   Tissue.LIGAMENT, Tissue.MARROW)

    def _paint_bodies_and_discs(self, tissue: NDArray[np.uint8], p: _Where) -> None:
        """Vertebral bodies, sacrum and discs."""
        u, v, along, dz, half = p.u, p.v, p.along, p.dz, p.half
        rbx, rby = self.body_radii
        body = (u / rbx) ** 2 + (v / rby) ** 2
        in_body = (body < 1.0) & (along < self.disc_along[-1] + 30)
        in_disc = in_body & (np.abs(dz) < half)
        bone = in_body & ~in_disc
        tissue[bone] = Tissue.MARROW
        tissue[bone & ((body > 0.8) | (np.abs(dz) - half < 1.2))] = Tissue.CORTEX
        tissue[in_disc] = Tissue.ANNULUS
        tissue[in_disc & (body < 0.45)] = Tissue.NUCLEUS

    def _paint_foramina(self, tissue: NDArray[np.uint8], p: _Where) -> None:
        """Neural foramina (fat around the exiting root), one per side and disc."""
        u, v, disc, dz = p.u, p.v, p.disc, p.dz
        vc = self.canal_offset
        path = self.pathology
        fv, fz = self.foramen_radii
        for side, sign in enumerate((1.0, -1.0)):
            lateral = np.abs(sign * u - self.foramen_offset) < 6.0
            frac = path.foraminal[side][disc]
            full = lateral & (((v - vc) / fv) ** 2 + (dz / fz) ** 2 < 1.0)
            tissue[full] = Tissue.LIGAMENT
            open_v = fv * (1.0 - 0.8 * frac)
            open_z = fz * (1.0 - 0.4 * frac)
            tissue[full & (((v - vc) / open_v) ** 2 + (dz / open_z) ** 2 < 1.0)] = Tissue.FAT
            root = ((v - vc + 0.25 * fv) / 2.0) ** 2 + ((dz - 0.35 * fz) / 2.0) ** 2 < 1.0
            tissue[lateral & root & full] = Tissue.NERVE

    def _paint_canal(self, tissue: NDArray[np.uint8], p: _Where) -> None:
        """The spinal canal: CSF pinched from the front (disc) and back (flavum) at stenotic levels."""
        u, v, disc, dz, half = p.u, p.v, p.disc, p.dz, p.half
        rcu, rcv = self.canal_radii
        vc = self.canal_offset
        path = self.pathology
        ellipse = (u / rcu) ** 2 + ((v - vc) / rcv) ** 2
        width = half + 5.0
        bump = np.where(np.abs(dz) < width, np.cos(0.5 * np.pi * dz / width) ** 2, 0.0)
        squeeze = path.spinal[disc] * bump
        front = vc - rcv + 1.3 * rcv * squeeze
        back = vc + rcv - 0.5 * rcv * squeeze
        canal = ellipse < 1.0
        tissue[(ellipse >= 1.0) & (ellipse < 1.3) & (v > vc)] = Tissue.FAT  # epidural fat
        bulge = canal & (v < front)
        tissue[bulge] = np.where(np.abs(dz[bulge]) < half[bulge] + 3, Tissue.ANNULUS,
                                 Tissue.LIGAMENT)
        tissue[canal & (v > back)] = Tissue.LIGAMENT
        tissue[canal & (v >= front) & (v <= back)] = Tissue.CSF

    def _paint_recesses(self, tissue: NDArray[np.uint8], p: _Where) -> None:
        """The lateral (subarticular) recesses at the disc level, filled in by stenosis."""
        u, v, disc, dz, half = p.u, p.v, p.disc, p.dz, p.half
        vc = self.canal_offset
        path = self.pathology
        for side, sign in enumerate((1.0, -1.0)):
            frac = path.subarticular[side][disc]
            du = sign * u - self.recess_offset
            near_disc = np.abs(dz) < half + 4.0
            recess = near_disc & ((du / 4.5) ** 2 + ((v - vc) / 3.8) ** 2 < 1.0)
            tissue[recess] = Tissue.LIGAMENT
            shrink = 1.0 - 0.85 * frac
            open_recess = recess & ((du / (4.5 * shrink)) ** 2
                                    + ((v - vc) / (3.8 * shrink)) ** 2 < 1.0)
            tissue[open_recess] = Tissue.CSF
            tissue[recess & ((du / 1.4) ** 2 + ((v - vc) / 1.4) ** 2 < 1.0)] = Tissue.NERVE


def random_anatomy(rng: np.random.Generator, pathology: Pathology) -> SpineAnatomy:
    """Draw one study's shape, size, curvature, position and tilt."""
    disc_height = rng.uniform(8.0, 12.0, N_DISCS)
    body_height = rng.uniform(24.0, 30.0, N_DISCS)
    # discs 0..4 are the graded L1/L2..L5/S1 (L5/S1 at along=0), 5 = T12/L1, 6 = T11/T12
    along = np.zeros(N_DISCS)
    for k in (3, 2, 1, 0):
        along[k] = along[k + 1] + disc_height[k + 1] / 2 + body_height[k] + disc_height[k] / 2
    along[5] = along[0] + disc_height[0] / 2 + body_height[5] + disc_height[5] / 2
    along[6] = along[5] + disc_height[5] / 2 + body_height[6] + disc_height[6] / 2
    rbx, rby = rng.uniform(20.0, 25.0), rng.uniform(14.0, 18.0)
    rcu, rcv = rng.uniform(10.0, 13.0), rng.uniform(6.5, 8.5)
    return SpineAnatomy(
        rotation=rotation_matrix(rng.uniform(-6, 6), rng.uniform(-3, 3), rng.uniform(-4, 4)),
        translation=np.array([rng.uniform(-15, 15), rng.uniform(-20, 20), rng.uniform(-60, 60)]),
        disc_along=along,
        disc_height=disc_height,
        lordosis=rng.uniform(15.0, 35.0),
        apex=(along[1] + along[2]) / 2 + rng.uniform(-10.0, 10.0),
        body_radii=(rbx, rby),
        canal_radii=(rcu, rcv),
        canal_offset=rby + 1.0 + rcv,
        foramen_offset=rng.uniform(19.0, 24.0),
        foramen_radii=(rng.uniform(5.0, 6.5), rng.uniform(7.0, 9.0)),
        recess_offset=rcu - 0.5,
        body_outline=(rng.uniform(130, 170), rng.uniform(110, 170), rby + rcv * 2 + rng.uniform(55, 80)),
        fat_thickness=rng.uniform(8.0, 25.0),
        pathology=pathology,
    )


LEVEL_INDEX = {lv: i for i, lv in enumerate(LEVELS)}
