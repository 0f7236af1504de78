"""Intensity transforms: histogram matching to a reference inside the object mask, percentile
normalisation independent of the bit depth, and a random scale and shift.

Array versions work on one image (``(C, H, W)`` or any shape where stated), dictionary versions
(suffix ``d``) on the sample dictionaries. Outputs are float32 of the input's kind (numpy in, numpy out).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, Transform

from scripts.data.image_reader import read_image
from scripts.keys import LandmarkKeys
from scripts.transforms.utils import check_image, float_tensor, like_input, percentiles, range_pair

__all__ = [
    "HistogramMatch",
    "HistogramMatchd",
    "RobustNormalizeIntensity",
    "RobustNormalizeIntensityd",
    "RandIntensityScaleShift",
    "RandIntensityScaleShiftd",
]


class HistogramMatch(Transform):
    """Histogram matching inside the object (Otsu) mask, as in the SCN preprocessing.

    Both the input and the reference are masked by an Otsu threshold (see ``_otsu_mask``); the
    input pixels inside its mask get the grey values that give the reference's masked histogram
    (exact cumulative-histogram matching, ``skimage.exposure.match_histograms`` on the masked
    values); pixels outside the mask are untouched. Every channel is matched on its own.

    Args:
        reference: image file path (read with :func:`scripts.data.image_reader.read_image`), a ``(H, W)`` /
            ``(1, H, W)`` array, or ``None`` (identity). The reference is resized to the input's size
            on first use (cached per size), so its histogram has the input's number of pixels.
        outside_mask: ``"keep"`` leaves pixels outside the mask untouched (the published
            preprocessing); ``"map"`` applies the same monotone grey-value mapping, learnt inside the
            mask, to every pixel (continued with slope 1 beyond the masked range), which avoids the
            step at the mask border where the mask cuts through an object (e.g. fingers whose soft
            tissue is darker than the palm's).
    """

    def __init__(self, reference=None, outside_mask: str = "keep") -> None:
        if outside_mask not in ("keep", "map"):
            raise ValueError(f"outside_mask must be 'keep' or 'map', got {outside_mask!r}.")
        self.outside_mask = outside_mask
        self.reference = reference
        self._reference_image: np.ndarray | None = None
        self._masked_reference: dict[tuple[int, int], np.ndarray] = {}

    def _reference_values(self, hw: tuple[int, int]) -> np.ndarray:
        if hw not in self._masked_reference:
            if self._reference_image is None:
                if isinstance(self.reference, (str, bytes)) or hasattr(self.reference, "__fspath__"):
                    ref = read_image(self.reference).array
                else:
                    ref = float_tensor(self.reference).cpu().numpy()
                ref = np.asarray(ref, dtype=np.float32)
                if ref.ndim == 3 and ref.shape[0] == 1:
                    ref = ref[0]
                if ref.ndim != 2:
                    raise ValueError(f"{type(self).__name__}: reference must be a 2D image, got shape {ref.shape}.")
                self._reference_image = ref
            ref = self._reference_image
            if ref.shape != hw:
                ref = F.interpolate(
                    torch.from_numpy(ref)[None, None], size=hw, mode="bilinear", align_corners=False, antialias=True
                )[0, 0].numpy()
            mask = _otsu_mask(ref)
            if mask is None:
                raise ValueError(f"{type(self).__name__}: the reference image is constant.")
            self._masked_reference[hw] = ref[mask]
        return self._masked_reference[hw]

    def __call__(self, img):
        """Match ``img`` ``(C, H, W)``; returns float32 of the same kind."""
        from skimage.exposure import match_histograms

        check_image(img, type(self).__name__)
        if self.reference is None:
            return like_input(float_tensor(img).clone(), img)
        x = float_tensor(img).cpu().numpy().copy()
        ref_values = self._reference_values((x.shape[1], x.shape[2]))
        for channel in x:
            mask = _otsu_mask(channel)
            if mask is None:
                continue
            if self.outside_mask == "keep":
                channel[mask] = match_histograms(channel[mask], ref_values)
            else:
                channel[:] = _monotone_match(channel, channel[mask], ref_values)
        out = torch.from_numpy(x)
        if isinstance(img, torch.Tensor):
            out = out.to(img.device)
        return like_input(out, img)


def _monotone_match(image: np.ndarray, source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Map ``image`` by the quantile mapping that takes ``source`` values to ``reference`` values.

    Below/above the source range the mapping continues with slope 1, so it stays continuous and monotone.
    """
    q = np.linspace(0.0, 1.0, 1025)
    src_q, ref_q = np.quantile(source, q), np.quantile(reference, q)
    src_q = np.maximum.accumulate(src_q + np.arange(q.size) * 1e-9 * max(1.0, float(np.ptp(src_q))))
    out = np.interp(image, src_q, ref_q)
    low, high = image < src_q[0], image > src_q[-1]
    out[low] = image[low] - src_q[0] + ref_q[0]
    out[high] = image[high] - src_q[-1] + ref_q[-1]
    return out.astype(np.float32)


def _otsu_mask(image: np.ndarray) -> np.ndarray | None:
    """Object mask: Otsu threshold of the lightly smoothed image, closed and with holes filled.

    Smoothing, closing and filling make one solid region for the object (a hand, not speckles of
    bone), so histogram matching does not leave blotches where noisy pixels straddle the threshold.
    Returns ``None`` for a constant image or an empty mask.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    if image.min() == image.max():
        return None
    smooth = ndimage.gaussian_filter(image.astype(np.float32), sigma=max(1.0, 0.005 * min(image.shape)))
    mask = smooth > threshold_otsu(smooth)
    mask = ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=2))
    return mask if mask.any() else None


class HistogramMatchd(MapTransform):
    """Dictionary version of :class:`HistogramMatch` (one cached reference for all keys)."""

    def __init__(
        self, keys: KeysCollection = (LandmarkKeys.IMAGE,), reference=None, outside_mask: str = "keep", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.matcher = HistogramMatch(reference, outside_mask)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.matcher(d[key])
        return d


class RobustNormalizeIntensity(Transform):
    """Map the ``lower``/``upper`` percentiles of the image to ``b_min``/``b_max`` (linearly).

    Independent of the bit depth: an 8-bit image and its x257 16-bit version give the same output.
    A constant image (equal percentiles) gives zeros.

    Args:
        lower, upper: percentiles in ``[0, 100]``, computed over all pixels and channels.
        b_min, b_max: output values of those percentiles.
        clip: clip the output to ``[b_min, b_max]``.
    """

    def __init__(
        self, lower: float = 1.0, upper: float = 99.0, b_min: float = -1.0, b_max: float = 1.0, clip: bool = False
    ) -> None:
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}.")
        self.lower, self.upper = float(lower), float(upper)
        self.b_min, self.b_max = float(b_min), float(b_max)
        self.clip = clip

    def __call__(self, img):
        """Normalise ``img`` (any shape); returns float32 of the same kind."""
        x = float_tensor(img)
        low, high = percentiles(img if isinstance(img, torch.Tensor) else x.numpy(), (self.lower, self.upper))
        if not high - low > 1e-12 * max(1.0, abs(high), abs(low)):
            return like_input(torch.zeros_like(x), img)
        scale = (self.b_max - self.b_min) / (high - low)
        out = (x - low) * scale + self.b_min
        if self.clip:
            out = out.clamp(min(self.b_min, self.b_max), max(self.b_min, self.b_max))
        return like_input(out, img)


class RobustNormalizeIntensityd(MapTransform):
    """Dictionary version of :class:`RobustNormalizeIntensity`."""

    def __init__(
        self,
        keys: KeysCollection = (LandmarkKeys.IMAGE,),
        lower: float = 1.0,
        upper: float = 99.0,
        b_min: float = -1.0,
        b_max: float = 1.0,
        clip: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = RobustNormalizeIntensity(lower, upper, b_min, b_max, clip)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key])
        return d


class RandIntensityScaleShift(RandomizableTransform):
    """``image * scale + shift``, ``scale ~ U(scale_range)``, ``shift ~ U(shift_range)``, with probability ``prob``."""

    def __init__(
        self,
        prob: float = 1.0,
        scale_range: Sequence[float] = (0.75, 1.25),
        shift_range: Sequence[float] = (-0.25, 0.25),
    ) -> None:
        super().__init__(prob)
        self.scale_range = range_pair(scale_range, "scale_range", symmetric=False)
        self.shift_range = range_pair(shift_range, "shift_range", symmetric=True)
        self.scale, self.shift = 1.0, 0.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self.scale = float(self.R.uniform(*self.scale_range))
        self.shift = float(self.R.uniform(*self.shift_range))

    def __call__(self, img, randomize: bool = True):
        """Apply to ``img`` (any shape); returns float32 of the same kind."""
        if randomize:
            self.randomize()
        x = float_tensor(img)
        out = x * self.scale + self.shift if self._do_transform else x.clone()
        return like_input(out, img)


class RandIntensityScaleShiftd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandIntensityScaleShift`: one draw for all ``keys``."""

    def __init__(
        self,
        keys: KeysCollection = (LandmarkKeys.IMAGE,),
        prob: float = 1.0,
        scale_range: Sequence[float] = (0.75, 1.25),
        shift_range: Sequence[float] = (-0.25, 0.25),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.intensity = RandIntensityScaleShift(1.0, scale_range, shift_range)

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.intensity.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        self.intensity.randomize()
        for key in self.key_iterator(d):
            d[key] = self.intensity(d[key], randomize=False)
        return d

