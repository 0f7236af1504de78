"""Deterministic synthetic radiographs with landmarks: the hand and long-leg renderers of the demo data.

Each renderer returns a uint16 image ``(H, W)`` and its landmarks ``(N, 2)``; :mod:`scripts.data.synthetic`
writes them as a dataset folder. Coordinates follow :mod:`scripts.coords`: points are ``(x, y)`` =
(column, row) in pixels of the image, integer = pixel centre.

Two kinds of image exist:

* ``"hand"``: a left hand, palm down, thumb on the image's right, with the 37 landmarks laid out
  like the hand atlas of Payer et al. (0-1 ulna, 2-4 radius, 5-12 carpals, 13-17 metacarpal bases
  from the little finger to the thumb, then the joints of each finger from its base to its tip:
  thumb 18-20, index 21-24, middle 25-28, ring 29-32, little 33-36). The template is an original
  rough mean shape; every joint is drawn the same way so that only the configuration tells the
  landmarks apart. No spacing (like the real hand atlas).
* ``"lower_limb"``: an AP long-leg radiograph (pelvis, femurs, tibias, fibulas) with 6 landmarks
  (see ``LOWER_LIMB_LANDMARKS``); the patient's right is on the image's left. The physical field
  of view is that of a real long-leg film (about 1044 x 400 mm), so the spacing scales with the
  image size: 0.143 mm/px at the full 7300 x 2800 px. Optional metal implants (hip stems, knee
  replacements; ``LOWER_LIMB_IMPLANTS``) cover the joints without changing anatomy or landmarks.

Shapes are rendered analytically (:mod:`scripts.data.canvas`) on a float32 grid of at most ``MAX_RENDER_PIXELS`` pixels and
upsampled in row chunks (with per-pixel noise) to the output size, so a full-size long-leg image
needs well under 1 GB.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from scripts.data.canvas import (
    MAX_VALUE,
    Canvas,
    check_image_hw,
    convex_hull,
    finish_radiograph,
    fit_into_image,
    rotation_matrix,
)

__all__ = [
    "HAND_LANDMARKS",
    "HAND_FINGER_CHAINS",
    "LOWER_LIMB_LANDMARKS",
    "LOWER_LIMB_IMPLANTS",
    "HAND_DEFAULT_HW",
    "LOWER_LIMB_DEFAULT_HW",
    "LOWER_LIMB_FULL_HW",
    "LOWER_LIMB_FULL_SPACING",
    "check_implants",
    "render_hand",
    "render_lower_limb",
    "lower_limb_spacing",
]

_FINGER_NAMES = ("thumb", "index", "middle", "ring", "little")
# Joint chain of each finger, from its metacarpal base to its tip (landmark indices).
HAND_FINGER_CHAINS = {
    "thumb": (17, 18, 19, 20),
    "index": (16, 21, 22, 23, 24),
    "middle": (15, 25, 26, 27, 28),
    "ring": (14, 29, 30, 31, 32),
    "little": (13, 33, 34, 35, 36),
}

HAND_LANDMARKS = (
    ["ulna_0", "ulna_1", "radius_0", "radius_1", "radius_2"]
    + [f"carpal_{i}" for i in range(8)]
    + [f"{name}_mc_base" for name in ("little", "ring", "middle", "index", "thumb")]
    + ["thumb_mcp", "thumb_ip", "thumb_tip"]
    + [f"{name}_{joint}" for name in _FINGER_NAMES[1:] for joint in ("mcp", "pip", "dip", "tip")]
)
"""Names of the 37 hand landmarks, in the column order of ``landmarks.csv``."""

LOWER_LIMB_LANDMARKS = [
    "femoral_head_right",
    "knee_right",
    "ankle_right",
    "femoral_head_left",
    "knee_left",
    "ankle_left",
]
"""Names of the 6 lower-limb landmarks; the patient's right leg is on the image's left."""

LOWER_LIMB_IMPLANTS = ("hip_right", "hip_left", "knee_right", "knee_left")
"""Metal implants :func:`render_lower_limb` can draw: a hip stem with its ball (centred on the femoral head
landmark) and a knee replacement (femoral component over the joint space, tibial tray and stem)."""
METAL_LEVEL = 0.97
"""Raw grey level of metal before the acquisition model: above any bone, close to saturation."""

HAND_DEFAULT_HW = (400, 320)
"""Nominal ``(H, W)`` of a demo hand image, pixels; each image varies by up to 10 % per axis."""
LOWER_LIMB_DEFAULT_HW = (1024, 400)
LOWER_LIMB_FULL_HW = (7300, 2800)
LOWER_LIMB_FULL_SPACING = 0.143
"""Spacing of a full-size long-leg radiograph, mm/px (isotropic)."""



# Rough mean hand in template units (1 unit ~ 225 mm), x right, y down: an original hand-made
# layout, not derived coordinate by coordinate from any data set.
_HAND_TEMPLATE = np.array(
    [
        (0.290, 0.955), (0.305, 0.905),  # ulna
        (0.365, 0.955), (0.395, 0.940), (0.545, 0.950),  # radius
        (0.530, 0.880), (0.330, 0.870), (0.400, 0.895), (0.475, 0.895),  # carpals
        (0.375, 0.835), (0.445, 0.850), (0.520, 0.820), (0.585, 0.840),
        (0.330, 0.780), (0.385, 0.765), (0.445, 0.760), (0.520, 0.765), (0.615, 0.790),  # bases
        (0.770, 0.640), (0.850, 0.530), (0.915, 0.445),  # thumb
        (0.595, 0.470), (0.635, 0.300), (0.650, 0.200), (0.665, 0.120),  # index
        (0.455, 0.460), (0.460, 0.270), (0.460, 0.145), (0.455, 0.060),  # middle
        (0.330, 0.490), (0.300, 0.320), (0.285, 0.205), (0.275, 0.120),  # ring
        (0.215, 0.540), (0.150, 0.420), (0.110, 0.340), (0.080, 0.265),  # little
    ],
    dtype=np.float64,
)
_HAND_CENTRE = np.array([0.5, 0.52])
# Semi-axes of the carpal bones drawn around landmarks 5-12, template units.
_CARPAL_AXES = np.array(
    [(0.035, 0.027), (0.032, 0.028), (0.034, 0.030), (0.032, 0.029),
     (0.034, 0.031), (0.038, 0.033), (0.030, 0.028), (0.032, 0.030)]
)
# Bone half-widths (shaft, proximal end, distal end), template units, per bone of a finger chain.
_FINGER_BONE_RADII = {
    "thumb": [(0.021, 0.028, 0.029), (0.018, 0.025, 0.024), (0.014, 0.021, 0.014)],
    "finger": [(0.019, 0.026, 0.029), (0.016, 0.023, 0.021), (0.013, 0.019, 0.018), (0.010, 0.016, 0.012)],
}
_JOINT_HALF_GAP = 0.006
"""Half the gap between two bones at a joint, template units."""



def check_implants(implants, what: str) -> tuple[str, ...]:
    """``implants`` (a name or names of ``LOWER_LIMB_IMPLANTS``) as a tuple; ``what`` names the caller in the error."""
    implants = (implants,) if isinstance(implants, str) else tuple(implants or ())
    unknown = [i for i in implants if i not in LOWER_LIMB_IMPLANTS]
    if unknown:
        raise ValueError(f"{what}: unknown implant(s) {unknown}; choose from {list(LOWER_LIMB_IMPLANTS)}.")
    return implants


# ----------------------------------------------------------------------------- hand


def _hand_pose(rng: np.random.Generator) -> np.ndarray:
    """Template landmarks (37, 2) with a random per-finger pose, template units."""
    pts = _HAND_TEMPLATE.copy()
    pts[5:13] += rng.normal(0.0, 0.004, size=(8, 2))
    for name in _FINGER_NAMES:
        chain = list(HAND_FINGER_CHAINS[name])
        base, rest = pts[chain[0]], chain[1:]
        pts[rest] = base + rng.uniform(0.9, 1.1) * (pts[rest] - base)  # finger length
        swing = rng.uniform(-12.0, 12.0) if name == "thumb" else rng.uniform(-3.0, 3.0)
        pts[rest] = base + (pts[rest] - base) @ rotation_matrix(swing).T
        # spread of the phalanges about the first joint after the base, then a little flexion
        pivot, phalanges = pts[rest[0]], rest[1:]
        spread = rng.uniform(-6.0, 6.0) if name == "thumb" else rng.uniform(-9.0, 9.0)
        pts[phalanges] = pivot + (pts[phalanges] - pivot) @ rotation_matrix(spread).T
        for j in range(1, len(phalanges)):
            pivot = pts[phalanges[j - 1]]
            pts[phalanges[j:]] = pivot + (pts[phalanges[j:]] - pivot) @ rotation_matrix(rng.uniform(-4.0, 4.0)).T
    return pts


def render_hand(rng: np.random.Generator, image_hw: Sequence[int] = HAND_DEFAULT_HW):
    """Render one synthetic left-hand radiograph.

    Args:
        rng: the random generator; the image is a deterministic function of its state.
        image_hw: output ``(H, W)``, pixels.

    Returns:
        ``(image, points)``: ``image`` uint16 ``(H, W)``, values ``0..MAX_VALUE``, bone bright;
        ``points`` float64 ``(37, 2)`` landmark ``(x, y)`` in pixels (see :mod:`scripts.coords`),
        all inside the image, in the order of ``HAND_LANDMARKS``.
    """
    out_h, out_w = check_image_hw(image_hw, "render_hand")
    pose = _hand_pose(rng)
    # global pose: rotation, scale, aspect, translation (template units -> output px)
    rot = rotation_matrix(rng.uniform(-15.0, 15.0))
    aspect = math.sqrt(rng.uniform(0.92, 1.08))
    unit = 0.80 * min(out_h, out_w / 0.8) * rng.uniform(0.85, 1.15)  # px per template unit
    linear = rot @ np.diag([unit * aspect, unit / aspect])
    offset = np.array([out_w, out_h]) / 2.0 + rng.uniform(-0.06, 0.06, size=2) * np.array([out_w, out_h])

    def to_px(p):
        return (np.asarray(p, np.float64) - _HAND_CENTRE) @ linear.T + offset

    points = to_px(pose)
    scale, centre, shift = fit_into_image(points, (out_h, out_w), margin=0.03 * min(out_h, out_w) + 3.0)
    linear, offset = linear * scale, (offset - centre) * scale + centre + shift
    unit *= scale
    points = to_px(pose)

    canvas = Canvas((out_h, out_w))
    bone, tissue = canvas.zeros(), canvas.zeros()
    gap = _JOINT_HALF_GAP * unit

    def bone_segment(p, q, radii, start_inside=False, end_inside=False):
        """Bone between joints ``p`` and ``q``: ends stop short of the joints by the half gap, or
        (``*_inside``) reach half their radius past a base/tip landmark, which then lies on bone."""
        r_shaft, r_p, r_q = (r * unit for r in radii)
        axis = (q - p) / max(np.hypot(*(q - p)), 1e-9)
        a = p + axis * 0.5 * r_p if start_inside else p + axis * (gap + r_p)
        b = q - axis * 0.5 * r_q if end_inside else q - axis * (gap + r_q)
        canvas.capsule(bone, a, b, r_p, r_q, r_shaft)

    for name in _FINGER_NAMES:
        chain = HAND_FINGER_CHAINS[name]
        radii = _FINGER_BONE_RADII["thumb" if name == "thumb" else "finger"]
        size = 0.85 if name == "little" else 1.0
        for k, (i, j) in enumerate(zip(chain[:-1], chain[1:])):
            r = tuple(size * v for v in radii[k])
            bone_segment(points[i], points[j], r, start_inside=k == 0, end_inside=j == chain[-1])
            r_i, r_j = (1.8 * r[1] + 0.012) * unit, (1.8 * r[2] + 0.012) * unit
            canvas.capsule(tissue, points[i], points[j], r_i, r_j)
        tip_dir = points[chain[-1]] - points[chain[-2]]
        tip_out = points[chain[-1]] + 0.03 * unit * tip_dir / max(np.hypot(*tip_dir), 1e-9)
        canvas.capsule(tissue, points[chain[-1]], tip_out, 0.03 * unit, 0.025 * unit)
    for k in range(8):
        canvas.ellipse(bone, points[5 + k], tuple(_CARPAL_AXES[k] * unit), rng.uniform(-20.0, 20.0))
    # forearm: ulna (ends at its head around landmarks 0-1) and radius (flared distal end, 2-4)
    aux = to_px(np.array([(0.275, 1.6), (0.305, 0.93), (0.48, 1.6), (0.462, 1.03), (0.455, 0.947)]))
    canvas.capsule(bone, aux[0], aux[1], 0.024 * unit, 0.033 * unit, 0.022 * unit)
    canvas.capsule(bone, aux[2], aux[3], 0.03 * unit, 0.05 * unit)
    wrist_dir = points[4] - points[2]
    wrist_angle = math.degrees(math.atan2(wrist_dir[1], wrist_dir[0]))
    canvas.ellipse(bone, aux[4], (0.115 * unit, 0.03 * unit), wrist_angle)
    # soft tissue: palm (hull of the base and first finger joints, wrist and thumb base), forearm
    palm = points[[0, 1, 4, 5, 12, 13, 16, 17, 18, 21, 25, 29, 33]]
    canvas.convex_polygon(tissue, palm)
    hull = convex_hull(palm)
    for p, q in zip(hull, np.roll(hull, -1, axis=0)):
        canvas.capsule(tissue, p, q, 0.04 * unit, 0.04 * unit)
    canvas.capsule(tissue, to_px((0.42, 0.9)), to_px((0.42, 1.8)), 0.17 * unit, 0.19 * unit)
    tissue = canvas.blur(tissue, 0.012 * unit)
    tissue *= 1.0 + 0.1 * canvas.smooth_field(rng, (3, 3))

    bone = canvas.cortex(bone, 0.008 * unit, gain=0.7)
    raw = rng.uniform(0.02, 0.06) + rng.uniform(0.13, 0.2) * tissue + rng.uniform(0.32, 0.4) * bone
    image = finish_radiograph(canvas, raw, rng, gain_amplitude=rng.uniform(0.05, 0.12), gain_grid=(4, 4))
    return image, points


# ----------------------------------------------------------------------------- lower limb


def lower_limb_spacing(image_hw: Sequence[int]) -> float:
    """Isotropic spacing, mm/px, that gives an image of ``image_hw`` the field of view of a real
    long-leg radiograph (``LOWER_LIMB_FULL_HW`` at ``LOWER_LIMB_FULL_SPACING``)."""
    h, w = check_image_hw(image_hw, "lower_limb_spacing")
    full_h, full_w = LOWER_LIMB_FULL_HW
    return LOWER_LIMB_FULL_SPACING * max(full_h / h, full_w / w)


def render_lower_limb(rng: np.random.Generator, image_hw: Sequence[int] = LOWER_LIMB_DEFAULT_HW,
                      spacing: float | None = None, implants: Sequence[str] = ()):
    """Render one synthetic AP long-leg radiograph (both legs, patient's right on the image's left).

    Args:
        rng: the random generator; the image is a deterministic function of its state.
        image_hw: output ``(H, W)``, pixels; up to the full ``(7300, 2800)`` (rendered at most at
            ``MAX_RENDER_PIXELS`` and upsampled in chunks, well under 1 GB).
        spacing: isotropic mm/px; default ``lower_limb_spacing(image_hw)``. Anatomy that does not
            fit the field of view (a spacing much smaller than the default) is scaled down to fit.
        implants: any of ``LOWER_LIMB_IMPLANTS``: metal (grey level ``METAL_LEVEL``, brighter than bone)
            drawn over those joints. Their geometry follows the anatomy and draws nothing from ``rng``, so
            the same ``rng`` state gives the same anatomy, noise and landmarks with or without implants.

    Returns:
        ``(image, points)``: ``image`` uint16 ``(H, W)``, values ``0..MAX_VALUE``, bone bright;
        ``points`` float64 ``(6, 2)`` landmark ``(x, y)`` in pixels, inside the image, in the order
        of ``LOWER_LIMB_LANDMARKS``.
    """
    out_h, out_w = check_image_hw(image_hw, "render_lower_limb")
    implants = check_implants(implants, "render_lower_limb")
    spacing = lower_limb_spacing((out_h, out_w)) if spacing is None else float(spacing)
    if not spacing > 0:
        raise ValueError(f"render_lower_limb: spacing must be positive mm/px, got {spacing!r}.")

    # Skeleton in mm: x right (towards the patient's left), y down; origin between the hip centres.
    half_hips = rng.uniform(82.0, 98.0)
    femur_len = rng.uniform(410.0, 470.0)
    tibia_len = femur_len * rng.uniform(0.78, 0.86)
    joints = {}
    frames = {}
    for side, lateral in (("right", -1.0), ("left", 1.0)):
        asym = rng.uniform(0.97, 1.03)
        head = np.array([lateral * half_hips, 0.0])
        femur_angle = lateral * rng.uniform(1.5, 4.5)  # the knee lies medial of the hip
        knee = head + femur_len * asym * (rotation_matrix(femur_angle) @ np.array([0.0, 1.0]))
        tibia_angle = lateral * float(np.clip(rng.normal(0.0, 2.5), -6.0, 6.0))  # with femur: varus/valgus
        ankle = knee + tibia_len * asym * (rotation_matrix(tibia_angle) @ np.array([0.0, 1.0]))
        joints[side] = (head, knee, ankle)
        frames[side] = (lateral, femur_angle, tibia_angle)
    mm_points = np.array([*joints["right"], *joints["left"]])
    extent = np.concatenate([mm_points, [[-170.0, -150.0], [170.0, -150.0]], mm_points[[2, 5]] + [0.0, 70.0]])

    # global pose (mm -> output px) and fitting into the image
    rot_deg = rng.uniform(-2.0, 2.0)
    px_per_mm = rng.uniform(0.94, 1.06) / spacing
    linear = rotation_matrix(rot_deg) * px_per_mm
    centre_mm = (extent.min(0) + extent.max(0)) / 2.0
    offset = np.array([out_w, out_h]) / 2.0 + rng.uniform(-15.0, 15.0, size=2) / spacing

    def to_px(p):
        return (np.asarray(p, np.float64) - centre_mm) @ linear.T + offset

    scale, centre, shift = fit_into_image(to_px(extent), (out_h, out_w), margin=5.0 / spacing)
    linear, offset = linear * scale, (offset - centre) * scale + centre + shift
    mm = px_per_mm * scale  # output px per anatomical mm
    points = to_px(mm_points)

    canvas = Canvas((out_h, out_w))
    bone, tissue, overlay = canvas.zeros(), canvas.zeros(), canvas.zeros()

    def along(side, joint, distance, sideways=0.0):
        """Output px of the point ``distance`` mm below joint ``joint`` (0 hip, 1 knee, 2 ankle)
        along the femur (above the knee) or tibia (below), and ``sideways`` mm to the lateral side."""
        lateral, femur_angle, tibia_angle = frames[side]
        on_femur = joint == 0 or (joint == 1 and distance < 0)
        down = rotation_matrix(femur_angle if on_femur else tibia_angle) @ (0.0, 1.0)
        out = lateral * np.array([down[1], -down[0]])
        return to_px(joints[side][joint] + distance * down + sideways * out)

    def bone_angle(side, joint):
        """Image angle, degrees, of the femur (hip) or tibia (knee, ankle) of ``side``."""
        return rot_deg + frames[side][1 if joint == 0 else 2]

    # pelvis, sacrum, lower lumbar spine
    for lateral in (-1.0, 1.0):
        c = np.array([lateral * half_hips, 0.0])
        wing_angle = rot_deg - lateral * 25.0
        canvas.ellipse(bone, to_px(c + [lateral * 5.0, -80.0]), (72 * mm, 55 * mm), wing_angle, value=0.55)
        canvas.ellipse(bone, to_px(c + [-lateral * 3.0, -10.0]), (34 * mm, 30 * mm), rot_deg, value=0.62)
        canvas.capsule(bone, to_px(c + [-lateral * 25.0, 12.0]), to_px([lateral * 14.0, 38.0]), 11 * mm, 9 * mm,
                       value=0.6)
        canvas.ellipse(bone, to_px(c + [-lateral * 30.0, 62.0]), (22 * mm, 20 * mm), rot_deg, value=0.6)
        canvas.capsule(bone, to_px(c + [-lateral * 45.0, 72.0]), to_px([lateral * 16.0, 58.0]), 7 * mm, 7 * mm,
                       value=0.58)
    canvas.ellipse(bone, to_px([0.0, -70.0]), (42 * mm, 58 * mm), rot_deg, value=0.5)
    for k, y in enumerate((-150.0, -185.0)):
        canvas.ellipse(bone, to_px([0.0, y]), ((26 + 2 * k) * mm, 14 * mm), rot_deg, value=0.55)

    for side in ("right", "left"):
        head, knee, ankle = (to_px(p) for p in joints[side])
        # femur: round head, neck, trochanters, shaft, flared distal end and condyles; the knee and
        # ankle landmarks lie in the middle of 5 mm joint spaces
        r_head = rng.uniform(22.0, 26.0) * mm
        canvas.ellipse(bone, head, (r_head, r_head), value=1.0)
        trochanter = along(side, 0, 45.0, 55.0)
        canvas.capsule(bone, head, trochanter, 15 * mm, 17 * mm, value=0.9)
        canvas.ellipse(bone, along(side, 0, 35.0, 68.0), (18 * mm, 28 * mm), bone_angle(side, 0), value=0.85)
        canvas.ellipse(bone, along(side, 0, 85.0, 20.0), (9 * mm, 12 * mm), bone_angle(side, 0), value=0.8)
        canvas.capsule(bone, along(side, 0, 55.0, 42.0), along(side, 1, -90.0, 2.0), 17 * mm, 15 * mm,
                       value=0.85)
        canvas.capsule(bone, along(side, 1, -110.0, 2.0), along(side, 1, -45.0), 15 * mm, 34 * mm,
                       value=0.85)
        for dx in (-19.0, 19.0):
            canvas.ellipse(bone, along(side, 1, -25.5, dx), (19 * mm, 23 * mm), bone_angle(side, 0), value=0.95)
        patella = along(side, 1, -35.0, -3.0)
        canvas.ellipse(overlay, patella, (20 * mm, 24 * mm), bone_angle(side, 0), value=0.15)
        # tibia: plateau, shaft, distal end; fibula; talus and calcaneus
        canvas.ellipse(bone, along(side, 1, 14.5), (39 * mm, 12 * mm), bone_angle(side, 1), value=0.95)
        canvas.capsule(bone, along(side, 1, 33.5), along(side, 1, 110.0), 31 * mm, 14 * mm, value=0.85)
        canvas.capsule(bone, along(side, 1, 80.0), along(side, 2, -70.0), 14 * mm, 11 * mm, value=0.85)
        canvas.capsule(bone, along(side, 2, -90.0), along(side, 2, -25.0), 11 * mm, 20 * mm, value=0.85)
        canvas.ellipse(bone, along(side, 2, -12.5), (23 * mm, 10 * mm), bone_angle(side, 2), value=0.9)
        canvas.capsule(bone, along(side, 2, -20.0, -20.0), along(side, 2, 10.0, -21.0), 7 * mm, 6 * mm,
                       value=0.85)
        canvas.ellipse(bone, along(side, 1, 30.0, 34.0), (11 * mm, 10 * mm), value=0.8)
        canvas.capsule(bone, along(side, 1, 35.0, 36.0), along(side, 2, -5.0, 24.0), 7 * mm, 6 * mm,
                       value=0.75)
        canvas.capsule(bone, along(side, 2, -10.0, 24.0), along(side, 2, 14.0, 25.0), 8 * mm, 6 * mm,
                       value=0.8)
        canvas.ellipse(bone, along(side, 2, 15.5), (21 * mm, 13 * mm), bone_angle(side, 2), value=0.95)
        canvas.ellipse(bone, along(side, 2, 50.0, 4.0), (22 * mm, 22 * mm), value=0.8)
        # soft tissue of the thigh, calf and foot
        canvas.capsule(tissue, along(side, 0, -20.0, 15.0), knee, 100 * mm, 58 * mm)
        canvas.capsule(tissue, knee, along(side, 1, 120.0), 58 * mm, 62 * mm)
        canvas.capsule(tissue, along(side, 1, 120.0), ankle, 62 * mm, 36 * mm)
        canvas.ellipse(tissue, along(side, 2, 55.0), (45 * mm, 45 * mm))
    canvas.ellipse(tissue, to_px([0.0, -90.0]), (175 * mm, 150 * mm))
    tissue = canvas.blur(tissue, 12.0 * mm)
    tissue *= 1.0 + 0.1 * canvas.smooth_field(rng, (6, 3))

    bone = canvas.cortex(bone, 3.0 * mm, gain=0.7) + overlay
    raw = rng.uniform(0.02, 0.05) + rng.uniform(0.15, 0.22) * tissue + rng.uniform(0.34, 0.4) * bone
    heel_effect = np.linspace(1.05, 0.95, canvas.hw[0], dtype=np.float32)[:, None] ** rng.choice([-1.0, 1.0])
    raw *= heel_effect
    if implants:
        metal = canvas.zeros()
        for implant in implants:
            joint, side = implant.split("_")
            if joint == "hip":  # ball on the femoral head, neck, stem down the femoral shaft
                canvas.ellipse(metal, to_px(joints[side][0]), (14 * mm, 14 * mm))
                canvas.capsule(metal, to_px(joints[side][0]), along(side, 0, 40.0, 40.0), 7 * mm, 9 * mm)
                canvas.capsule(metal, along(side, 0, 40.0, 40.0), along(side, 0, 190.0, 28.0), 10 * mm, 5 * mm)
            else:  # femoral component over the joint space, tibial tray, tibial stem
                canvas.ellipse(metal, along(side, 1, -12.0), (40 * mm, 16 * mm), bone_angle(side, 0))
                canvas.ellipse(metal, along(side, 1, 9.0), (38 * mm, 5 * mm), bone_angle(side, 1))
                canvas.capsule(metal, along(side, 1, 10.0), along(side, 1, 70.0), 7 * mm, 5 * mm)
        raw = np.maximum(raw, METAL_LEVEL * metal)
    image = finish_radiograph(canvas, raw, rng, gain_amplitude=rng.uniform(0.05, 0.1), gain_grid=(6, 3))
    return image, points

