"""The eight dihedral orientations (rotations by 90° and mirrors) of a 2-D array."""

from __future__ import annotations

import numpy as np

# name of orientation o: the query is turned by this to line up with the catalogue image
NAMES: tuple[str, ...] = (
    "identity", "rot90", "rot180", "rot270",
    "mirror", "mirror+rot90", "mirror+rot180", "mirror+rot270",
)


def orient(a: np.ndarray, o: int) -> np.ndarray:
    """Apply orientation o (0-7): a mirror (o >= 4) then o % 4 quarter turns anticlockwise."""
    if not 0 <= o < 8:
        raise ValueError("orientation must be in 0..7")
    if o >= 4:
        a = a[:, ::-1]
    return np.ascontiguousarray(np.rot90(a, o % 4))


def is_mirror(o: int) -> bool:
    """True for the four orientations that include a mirror."""
    return o >= 4
