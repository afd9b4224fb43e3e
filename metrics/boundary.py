"""Boundary metrics on binary masks: HD95 (pixels) and normalised surface Dice (NSD) at a tolerance.

Rules for empty masks (documented in the README; a miss never drops out of an average):
- prediction and truth both empty: HD95 = 0, NSD = 1 (correctly nothing there);
- exactly one empty: HD95 = the image diagonal (the largest possible distance), NSD = 0.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask with a 4-neighbour outside it (image edge counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    eroded = ndimage.binary_erosion(padded, structure=ndimage.generate_binary_structure(2, 1))[1:-1, 1:-1]
    return mask & ~eroded


def surface_distances(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances (px) from each boundary pixel of pred to gt's boundary, and from gt's to pred's."""
    bp, bg = _boundary(pred.astype(bool)), _boundary(gt.astype(bool))
    to_g = ndimage.distance_transform_edt(~bg)
    to_p = ndimage.distance_transform_edt(~bp)
    return to_g[bp], to_p[bg]


def hd95(pred: np.ndarray, gt: np.ndarray) -> float:
    """95th-percentile symmetric Hausdorff distance in pixels: max of the two directed 95th percentiles."""
    p, g = pred.astype(bool), gt.astype(bool)
    if not p.any() and not g.any():
        return 0.0
    if not p.any() or not g.any():
        return float(np.hypot(*p.shape))
    d_pg, d_gp = surface_distances(p, g)
    return float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))


def nsd(pred: np.ndarray, gt: np.ndarray, tolerance: float = 2.0) -> float:
    """Normalised surface Dice: the fraction of both boundaries lying within ``tolerance`` px of the other."""
    p, g = pred.astype(bool), gt.astype(bool)
    if not p.any() and not g.any():
        return 1.0
    if not p.any() or not g.any():
        return 0.0
    d_pg, d_gp = surface_distances(p, g)
    return float(((d_pg <= tolerance).sum() + (d_gp <= tolerance).sum()) / (len(d_pg) + len(d_gp)))
