"""Lower-limb measurements from the 6 landmarks of the ``lower_limb`` preset.

Landmark order (``scripts.data.phantoms.LOWER_LIMB_LANDMARKS``, the preset's CSV columns): femoral head
right, knee right, ankle right, femoral head left, knee left, ankle left; points ``(x, y)`` in
original pixels (:mod:`scripts.coords`), spacing ``(sx, sy)`` mm/px.

Per side (``right``, ``left``):

* ``hka_angle_deg``: the hip-knee-ankle angle, the angle at the knee centre between the femoral
  mechanical axis (knee -> femoral head centre) and the tibial mechanical axis (knee -> ankle
  centre); 180 = straight leg. Computed in mm when the spacing is known (so anisotropic pixels
  are handled), else in pixels (assumes square pixels).
* ``mechanical_axis_deviation_deg``: ``180 - hka_angle_deg`` with a sign: positive = varus (the knee
  lies lateral of the hip-ankle line, i.e. on the side away from the other femoral head), negative =
  valgus; ``null`` when the other femoral head (which tells medial from lateral) is missing.
* ``leg_length_mm``: straight distance femoral head centre -> ankle centre, mm (``null`` without
  spacing); ``leg_length_px``: the same in pixels (Euclidean in pixel units).

And ``leg_length_difference_mm`` = right - left (positive: the right leg is longer).

Uncertainty: with ``landmark_sd_px`` (the standard deviation of each landmark's position per axis,
pixels, e.g. the validation RMS error per axis), every value ``v`` gets ``v_sd`` by first-order
propagation: ``sd(v)^2 = sum_k sd_k^2 * |d v / d p_k|^2`` (independent, isotropic landmark errors;
the derivatives by central differences). Without it the ``_sd`` fields are ``null``: the values are
those of the predicted points, with no error bar claimed. A value whose landmarks are missing is ``null``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "LOWER_LIMB_ORDER",
    "hka_angle_deg",
    "propagated_sd",
    "LowerLimbMeasurements",
]

#: indices of (femoral head, knee, ankle) per side in the preset's landmark order.
LOWER_LIMB_ORDER = {"right": (0, 1, 2), "left": (3, 4, 5)}
_OTHER = {"right": "left", "left": "right"}
_DECIMALS = 4


def hka_angle_deg(hip, knee, ankle) -> float:
    """Angle at ``knee`` between ``hip - knee`` and ``ankle - knee``, degrees in ``[0, 180]``; NaN if degenerate."""
    u = np.asarray(hip, dtype=np.float64) - np.asarray(knee, dtype=np.float64)
    v = np.asarray(ankle, dtype=np.float64) - np.asarray(knee, dtype=np.float64)
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if not (nu > 0 and nv > 0):
        return math.nan
    # atan2 of |cross| and dot: accurate near 180 degrees, where acos is not
    return math.degrees(math.atan2(abs(u[0] * v[1] - u[1] * v[0]), float(u @ v)))


def propagated_sd(function: Callable[[np.ndarray], float], points: np.ndarray, sd_px: np.ndarray,
                  step: float = 1e-3) -> float:
    """First-order standard deviation of ``function(points)`` for independent isotropic point errors.

    Args:
        function: ``(N, 2)`` points (px) -> a value.
        points: ``(N, 2)`` where the derivatives are taken.
        sd_px: ``(N,)`` standard deviation per point and axis, pixels.
        step: central-difference step, pixels.
    """
    points = np.asarray(points, dtype=np.float64)
    variance = 0.0
    for k in range(len(points)):
        if sd_px[k] == 0:
            continue
        for axis in range(2):
            plus, minus = points.copy(), points.copy()
            plus[k, axis] += step
            minus[k, axis] -= step
            derivative = (function(plus) - function(minus)) / (2 * step)
            variance += (sd_px[k] * derivative) ** 2
    return math.sqrt(variance)


def _number(value) -> float | None:
    value = float(value)
    return round(value, _DECIMALS) if math.isfinite(value) else None


class LowerLimbMeasurements:
    """Mechanical axis angles, leg lengths and their difference of one long-leg radiograph.

    Args:
        landmark_sd_px: standard deviation of each landmark's position per axis, pixels (a number
            for all, or 6 numbers); ``None``: no uncertainty is reported.
    """

    kind = "lower_limb"
    num_landmarks = 6

    def __init__(self, landmark_sd_px: float | Sequence[float] | None = None) -> None:
        if landmark_sd_px is None:
            self.sd_px = None
        else:
            sd = np.broadcast_to(np.asarray(landmark_sd_px, dtype=np.float64), (self.num_landmarks,)).copy()
            if not (np.isfinite(sd).all() and (sd >= 0).all()):
                raise ValueError(f"landmark_sd_px must be >= 0 pixels, got {landmark_sd_px!r}.")
            self.sd_px = sd

    @staticmethod
    def columns() -> list[str]:
        """CSV columns of :meth:`row`, in order."""
        columns = []
        for side in ("right", "left"):
            for name in ("hka_angle_deg", "mechanical_axis_deviation_deg", "leg_length_mm", "leg_length_px"):
                columns += [f"{side}_{name}", f"{side}_{name}_sd"]
        return columns + ["leg_length_difference_mm", "leg_length_difference_mm_sd"]

    def _value(self, function, points: np.ndarray) -> dict:
        value = function(points)
        sd = None
        if self.sd_px is not None and math.isfinite(value):
            sd = propagated_sd(function, points, self.sd_px)
        return {"value": _number(value), "sd": None if sd is None else _number(sd)}

    def __call__(self, points_px: np.ndarray, spacing: Sequence[float] | None) -> dict:
        """Measurements of one image.

        Args:
            points_px: ``(6, 2)`` ``(x, y)`` original pixels, NaN rows for missing landmarks.
            spacing: ``(sx, sy)`` mm/px, or ``None``.

        Returns:
            ``{"kind", "units", "right": {...}, "left": {...}, "leg_length_difference_mm": {"value", "sd"}}``,
            each measurement a ``{"value", "sd"}`` pair (``null`` where unknown).
        """
        points = np.asarray(points_px, dtype=np.float64).reshape(-1, 2)
        if len(points) != self.num_landmarks:
            raise ValueError(f"lower-limb measurements need {self.num_landmarks} landmarks, got {len(points)}.")
        scale = None if spacing is None else np.asarray(spacing, dtype=np.float64).reshape(2)
        metric = np.ones(2) if scale is None else scale  # the angles in mm where known

        def angle(side):
            hip, knee, ankle = LOWER_LIMB_ORDER[side]
            return lambda p: hka_angle_deg(p[hip] * metric, p[knee] * metric, p[ankle] * metric)

        def deviation(side):
            hip, knee, ankle = LOWER_LIMB_ORDER[side]
            other_hip = LOWER_LIMB_ORDER[_OTHER[side]][0]

            def signed(p):
                q = p * metric
                axis = q[ankle] - q[hip]
                offset = q[knee] - q[hip]
                lateral = q[hip] - q[other_hip]  # away from the other leg
                side_of_line = axis[0] * offset[1] - axis[1] * offset[0]
                lateral_side = axis[0] * lateral[1] - axis[1] * lateral[0]
                sign = math.copysign(1.0, side_of_line * lateral_side) if side_of_line * lateral_side != 0 else 1.0
                return sign * (180.0 - hka_angle_deg(q[hip], q[knee], q[ankle]))

            return signed

        def length(side, unit_scale):
            hip, _, ankle = LOWER_LIMB_ORDER[side]
            return lambda p: float(np.linalg.norm((p[hip] - p[ankle]) * unit_scale))

        result = {"kind": self.kind, "units": {"angle": "deg", "length": "mm" if scale is not None else None}}
        lengths = {}
        for side in ("right", "left"):
            result[side] = {
                "hka_angle_deg": self._value(angle(side), points),
                "mechanical_axis_deviation_deg": self._value(deviation(side), points),
                "leg_length_mm": self._value(length(side, scale), points) if scale is not None
                else {"value": None, "sd": None},
                "leg_length_px": self._value(length(side, np.ones(2)), points),
            }
            lengths[side] = length(side, scale) if scale is not None else None
        if scale is None:
            result["leg_length_difference_mm"] = {"value": None, "sd": None}
        else:
            result["leg_length_difference_mm"] = self._value(
                lambda p: lengths["right"](p) - lengths["left"](p), points)
        return result

    def row(self, measurements: dict) -> dict[str, float | None]:
        """The CSV cells (:meth:`columns`) of a :meth:`__call__` result."""
        cells = {}
        for side in ("right", "left"):
            for name, pair in measurements[side].items():
                cells[f"{side}_{name}"], cells[f"{side}_{name}_sd"] = pair["value"], pair["sd"]
        pair = measurements["leg_length_difference_mm"]
        cells["leg_length_difference_mm"], cells["leg_length_difference_mm_sd"] = pair["value"], pair["sd"]
        return cells
