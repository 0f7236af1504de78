"""Sub-pixel Gaussian landmark heatmaps, their decoding, and the map of decoded points back to the file.

Coordinates follow :mod:`scripts.coords`: points are ``(x, y)`` = (column, row) in pixels of the
heatmap grid, the integer ``k`` is the centre of pixel ``k``, a missing landmark is ``NaN``.

* :func:`gaussian_heatmaps` draws ``gamma * exp(-|X - p|^2 / (2 sigma^2))`` at the *float* position
  ``p`` (never rounded); it is plain torch and differentiable in ``points`` and ``sigma``.
* :func:`landmark_mask` says which landmarks a loss should use (present and inside the grid).
* :func:`decode_heatmaps` takes the integer maximum and refines it, either per axis with a parabola
  through the log values of the three neighbours (``"parabola"``) or with a weighted least-squares
  fit of a 2D quadratic to the log values in a small window (``"gaussian_fit"``, a Gaussian fit); both
  are exact for a noise-free Gaussian, the window fit is several times less sensitive to noise
  (``benchmarks/decoding.py``).
* :func:`points_to_original` / :func:`points_to_mm` take decoded network points back to original
  pixels (through the ``net_from_orig`` matrix of the preprocessing) and to millimetres.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from scripts.coords import apply_matrix, inside_image, invert_matrix, to_mm

__all__ = [
    "gaussian_heatmaps",
    "landmark_mask",
    "DECODE_METHODS",
    "DEFAULT_DECODE_METHOD",
    "resolve_decode_method",
    "decode_heatmaps",
    "decode_heatmaps_to_original",
    "points_to_original",
    "points_to_mm",
]


def gaussian_heatmaps(points, spatial_hw: Sequence[int], sigma=2.0, gamma: float = 100.0) -> torch.Tensor:
    """Gaussian heatmaps centred at sub-pixel landmark positions.

    ``g(X, Y) = gamma * exp(-((X - x)^2 + (Y - y)^2) / (2 sigma^2))`` evaluated at the pixel centres
    ``X = 0..W-1``, ``Y = 0..H-1``.

    A missing landmark (``NaN`` in either coordinate) gives an all-zero map and no NaN anywhere (also
    not in gradients). A landmark outside the grid still gives the part of its Gaussian tail that
    falls on the grid; whether a landmark should count in a loss is :func:`landmark_mask`'s job.

    Args:
        points: ``(B, N, 2)`` or ``(N, 2)`` tensor (or array) of ``(x, y)`` in pixels of this grid.
        spatial_hw: ``(H, W)`` of the heatmaps, pixels.
        sigma: standard deviation in pixels, a scalar or a tensor of shape ``(N,)`` (one per
            landmark); gradients flow to a tensor ``sigma``.
        gamma: peak value.

    Returns:
        ``(B, N, H, W)`` (or ``(N, H, W)`` for unbatched points) tensor, dtype of ``points``
        (float32 for non-float input), on the device of ``points``.
    """
    pts = torch.as_tensor(points)
    if not pts.is_floating_point():
        pts = pts.float()
    if pts.ndim not in (2, 3) or pts.shape[-1] != 2:
        raise ValueError(f"points must have shape (N, 2) or (B, N, 2), got {tuple(pts.shape)}.")
    unbatched = pts.ndim == 2
    if unbatched:
        pts = pts[None]
    height, width = int(spatial_hw[0]), int(spatial_hw[1])
    present = torch.isfinite(pts).all(dim=-1)  # (B, N)
    safe = torch.where(present[..., None], pts, torch.zeros_like(pts))
    sig = torch.as_tensor(sigma, dtype=pts.dtype, device=pts.device)
    if sig.ndim == 1:
        if sig.shape[0] != pts.shape[1]:
            raise ValueError(f"sigma has {sig.shape[0]} values for {pts.shape[1]} landmarks.")
        sig = sig[None, :, None, None]
    elif sig.ndim != 0:
        raise ValueError(f"sigma must be a scalar or have shape (N,), got {tuple(sig.shape)}.")
    cols = torch.arange(width, dtype=pts.dtype, device=pts.device)
    rows = torch.arange(height, dtype=pts.dtype, device=pts.device)
    two_var = 2.0 * sig * sig
    # separable: exp(-(dx^2 + dy^2) / 2s^2) = exp(-dx^2 / 2s^2) * exp(-dy^2 / 2s^2)
    gx = torch.exp(-((cols - safe[..., 0, None, None]) ** 2) / two_var)  # (B, N, 1, W)
    gy = torch.exp(-((rows[:, None] - safe[..., 1, None, None]) ** 2) / two_var)  # (B, N, H, 1)
    maps = gamma * gy * gx * present[..., None, None].to(pts.dtype)
    return maps[0] if unbatched else maps


def landmark_mask(points, spatial_hw: Sequence[int]):
    """``1.0`` for landmarks that are present (not NaN) and inside the grid, else ``0.0``.

    Inside uses :func:`scripts.coords.inside_image` (``-0.5 <= x <= W - 0.5``, same for ``y``).
    Use this mask in the loss: a landmark outside the grid has no peak on the heatmap, only a tail.

    Args:
        points: ``(..., N, 2)`` tensor or array of ``(x, y)`` grid pixels.
        spatial_hw: ``(H, W)`` of the grid.

    Returns:
        ``(..., N)`` float mask, a tensor (dtype of ``points``) for tensor input, else float32 array.
    """
    if isinstance(points, torch.Tensor):
        dtype = points.dtype if points.is_floating_point() else torch.float32
        return inside_image(points, spatial_hw).to(dtype)
    return inside_image(np.asarray(points, dtype=np.float64), spatial_hw).astype(np.float32)


def _parabola_offset(left: torch.Tensor, centre: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Vertex offset in ``[-0.5, 0.5]`` of the parabola through ``(-1, left), (0, centre), (1, right)``.

    Uses the log values when all three are positive (exact for a Gaussian), else the raw values;
    a flat or non-concave triple gives 0.
    """
    positive = (left > 0) & (centre > 0) & (right > 0)
    tiny = torch.finfo(centre.dtype).tiny
    log_l, log_c, log_r = (torch.log(v.clamp_min(tiny)) for v in (left, centre, right))
    a, b, c = (torch.where(positive, lg, raw) for lg, raw in ((log_l, left), (log_c, centre), (log_r, right)))
    curvature = a - 2.0 * b + c
    concave = curvature < 0
    offset = 0.5 * (a - c) / torch.where(concave, curvature, torch.ones_like(curvature))
    offset = torch.where(concave, offset, torch.zeros_like(offset))
    return offset.clamp(-0.5, 0.5)


def _gaussian_fit_offset(flat: torch.Tensor, row: torch.Tensor, col: torch.Tensor, peak: torch.Tensor,
                         hw: tuple[int, int], window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Offsets ``(dx, dy)`` of the maximum of a Gaussian fitted around the integer maxima.

    Fits ``log h = c0 + c1 u + c2 v + c3 u^2 + c4 v^2 + c5 u v`` by least squares over the
    ``window x window`` pixels ``(u, v)`` around ``(col, row)`` that are inside the grid and
    positive, weighted by ``(h / peak)^2`` (the log of a value with additive noise of sd ``s`` has sd
    about ``s / h``). Returns NaN where the fit is not a concave quadratic (too few positive pixels,
    a saddle, an offset beyond the window); the caller falls back to the parabola there.
    """
    height, width = hw
    radius = window // 2
    steps = torch.arange(-radius, radius + 1, device=flat.device)
    dv, du = torch.meshgrid(steps, steps, indexing="ij")
    du, dv = du.reshape(-1), dv.reshape(-1)  # (K,)
    r, c = row[..., None] + dv, col[..., None] + du  # (B, N, K)
    inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
    values = flat.gather(-1, (r.clamp(0, height - 1) * width + c.clamp(0, width - 1))).double()
    ref = peak.double()[..., None]
    use = inside & (values > 0) & (ref > 0)
    tiny = torch.finfo(torch.float64).tiny
    logs = torch.log(torch.where(use, values / ref.clamp_min(tiny), torch.ones_like(values)))
    weights = torch.where(use, (values / ref.clamp_min(tiny)) ** 2, torch.zeros_like(values))
    u, v = du.double(), dv.double()
    design = torch.stack((torch.ones_like(u), u, v, u * u, v * v, u * v), dim=-1)  # (K, 6)
    normal = torch.einsum("ki,bnk,kj->bnij", design, weights, design)
    rhs = torch.einsum("ki,bnk->bni", design, weights * logs)
    enough = use.sum(-1) >= 6
    normal = torch.where(enough[..., None, None], normal, torch.eye(6, dtype=normal.dtype, device=normal.device))
    coef, info = torch.linalg.solve_ex(normal, rhs[..., None])
    coef = coef[..., 0]
    c1, c2, c3, c4, c5 = coef.unbind(-1)[1:]
    # vertex: [[2 c3, c5], [c5, 2 c4]] (dx, dy) = -(c1, c2); concave iff c3 < 0 and det > 0
    det = 4.0 * c3 * c4 - c5 * c5
    safe_det = torch.where(det > 0, det, torch.ones_like(det))
    dx = (-2.0 * c4 * c1 + c5 * c2) / safe_det
    dy = (-2.0 * c3 * c2 + c5 * c1) / safe_det
    ok = enough & (info == 0) & (c3 < 0) & (det > 0) & (dx.abs() <= radius) & (dy.abs() <= radius)
    nan = torch.full_like(dx, float("nan"))
    return torch.where(ok, dx, nan), torch.where(ok, dy, nan)


DECODE_METHODS = ("parabola", "gaussian_fit")
#: method of :func:`decode_heatmaps` when none is given. The configs choose per model (``decode_method``, used
#: for validation, evaluation and inference): the window fit measured 3-5x lower errors than the parabola on
#: noisy Gaussian maps (``benchmarks/decoding.py``) and is ``hand.json``'s choice (on the tuning subset), but it is
#: worse on the bicubically up-sampled stride-4 maps of the hourglass (their log is not a quadratic).
DEFAULT_DECODE_METHOD = "parabola"


def resolve_decode_method(method: str | None) -> str:
    """``method`` checked against :data:`DECODE_METHODS`; ``None``: :data:`DEFAULT_DECODE_METHOD`."""
    method = DEFAULT_DECODE_METHOD if method is None else method
    if method not in DECODE_METHODS:
        raise ValueError(f"decode method must be one of {DECODE_METHODS}, got {method!r}.")
    return method


def decode_heatmaps(heatmaps: torch.Tensor, method: str | None = None, window: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-pixel maximum of every heatmap.

    ``"parabola"``: the integer argmax is refined along ``x`` and ``y`` separately by
    :func:`_parabola_offset` on the two neighbours along that axis (clamped to +-0.5 px); a maximum
    on the border of the grid is not refined along the axis it touches.
    ``"gaussian_fit"``: a weighted least-squares fit of a 2D quadratic to the log heatmap in the
    ``window x window`` pixels around the argmax (the pixels inside the grid), clamped to the window;
    where the fit is not concave, the parabola's refinement is used. Vectorised over batch and
    landmarks.

    Args:
        heatmaps: ``(B, N, H, W)`` tensor.
        method: ``"parabola"`` or ``"gaussian_fit"``; ``None``: :data:`DEFAULT_DECODE_METHOD`.
        window: odd window size of ``"gaussian_fit"``, pixels (at least 3).

    Returns:
        ``points`` ``(B, N, 2)`` ``(x, y)`` in heatmap pixels (float, dtype of the heatmaps), and
        ``peak`` ``(B, N)``, the heatmap value at the integer maximum.
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must have shape (B, N, H, W), got {tuple(heatmaps.shape)}.")
    method = resolve_decode_method(method)
    if int(window) != window or window < 3 or window % 2 == 0:
        raise ValueError(f"decode_heatmaps: window must be an odd integer >= 3, got {window!r}.")
    hm = heatmaps if heatmaps.is_floating_point() else heatmaps.float()
    batch, num, height, width = hm.shape
    flat = hm.reshape(batch, num, height * width)
    peak, index = flat.max(dim=-1)
    row, col = index // width, index % width

    def value_at(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        r = r.clamp(0, height - 1)
        c = c.clamp(0, width - 1)
        return flat.gather(-1, (r * width + c)[..., None])[..., 0]

    dx = _parabola_offset(value_at(row, col - 1), peak, value_at(row, col + 1))
    dy = _parabola_offset(value_at(row - 1, col), peak, value_at(row + 1, col))
    dx = torch.where((col > 0) & (col < width - 1), dx, torch.zeros_like(dx))
    dy = torch.where((row > 0) & (row < height - 1), dy, torch.zeros_like(dy))
    if method == "gaussian_fit":
        fit_x, fit_y = _gaussian_fit_offset(flat, row, col, peak, (height, width), int(window))
        fitted = torch.isfinite(fit_x)
        dx = torch.where(fitted, fit_x.to(hm.dtype), dx)
        dy = torch.where(fitted, fit_y.to(hm.dtype), dy)
    points = torch.stack((col.to(hm.dtype) + dx, row.to(hm.dtype) + dy), dim=-1)
    return points, peak


def points_to_original(points_net, net_from_orig):
    """Map points from network pixels back to original-image pixels.

    Args:
        points_net: ``(N, 2)`` or ``(B, N, 2)`` ``(x, y)`` network pixels, tensor or array.
        net_from_orig: ``(3, 3)`` (or ``(B, 3, 3)`` for batched points) matrix of the preprocessing
            (``net_from_orig`` of :mod:`scripts.transforms`).

    Returns:
        ``(x, y)`` original pixels, same shape as ``points_net``. The inversion and the mapping run
        in float64; a tensor comes back in the dtype of ``points_net``, an array as float64.
        NaN points stay NaN.
    """
    if isinstance(points_net, torch.Tensor):
        matrix = torch.as_tensor(net_from_orig, dtype=torch.float64, device=points_net.device)
        out = apply_matrix(points_net.double(), invert_matrix(matrix))
        return out.to(points_net.dtype if points_net.is_floating_point() else torch.float64)
    return apply_matrix(points_net, invert_matrix(net_from_orig))


def decode_heatmaps_to_original(heatmaps: torch.Tensor, orig_from_net) -> torch.Tensor:
    """Decode ``(B, N, H, W)`` heatmaps and map the points with ``orig_from_net`` ``(B, 3, 3)``.

    Returns ``(B, N, 2)`` ``(x, y)`` original pixels. (Use :func:`points_to_original` to map with
    ``net_from_orig`` instead.)
    """
    points, _ = decode_heatmaps(heatmaps)
    matrix = torch.as_tensor(orig_from_net, dtype=torch.float64, device=points.device)
    return apply_matrix(points.double(), matrix).to(points.dtype)


def points_to_mm(points_orig, spacing):
    """Scale original-pixel points (or point differences) to millimetres.

    Args:
        points_orig: ``(N, 2)`` or ``(B, N, 2)`` ``(x, y)`` original pixels, tensor or array.
        spacing: ``(sx, sy)`` mm/px, or ``(B, 2)`` for batched points. An unknown spacing
            (NaN pair, see ``LoadLandmarkImaged``) gives NaN.

    Returns:
        Same shape as ``points_orig``, in mm (array: float64; tensor: dtype of ``points_orig``).
    """
    is_tensor = isinstance(points_orig, torch.Tensor)
    if is_tensor:
        sp = torch.as_tensor(spacing, dtype=points_orig.dtype, device=points_orig.device)
    else:
        sp = np.asarray(spacing, dtype=np.float64)
    if sp.ndim == 2:  # (B, 2) against (B, N, 2)
        sp = sp[:, None, :]
    return to_mm(points_orig, sp)
