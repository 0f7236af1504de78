"""Read 2D X-ray images from PNG, JPEG, TIFF, DICOM, NIfTI, MHA/MHD and NRRD files.

Every reader returns the same thing, an :class:`ImageRecord`:

* ``array``: ``(H, W)`` float32, indexed ``[row, column]``, the pixels in the order they are stored
  in the file (no reorientation by a DICOM/NIfTI/ITK direction or affine, no EXIF rotation), so
  that landmark ``(x, y)`` = (column, row) refers to ``array[y, x]`` as in :mod:`scripts.coords`.
  Grey values are the file's own values (16-bit stays 16-bit, no rescaling to 255); colour is
  reduced to grey by Rec. 601 luminance ``0.299 R + 0.587 G + 0.114 B``.
* ``spacing``: ``(sx, sy)`` in mm per pixel along ``x`` (columns) and ``y`` (rows), or ``None``.
* ``spacing_source``: where the spacing came from: ``"PixelSpacing"``, ``"ImagerPixelSpacing"``,
  ``"NominalScannedPixelSpacing"`` (DICOM), ``"header"`` (NIfTI, MHA/MHD, NRRD) or ``"unknown"``.

Per format:

* PNG/JPEG (Pillow): 8- and 16-bit grey, grey + alpha (alpha dropped), palette, RGB(A).
  16-bit RGB(A) PNGs, which Pillow would cut to 8 bits, and TIFF go through SimpleITK; 16-bit
  grey + alpha PNGs are refused (neither library keeps their 16 bits). These formats carry no
  trustworthy mm spacing (dpi is a print setting): spacing is ``None``.
* DICOM (pydicom), recognised by the ``DICM`` magic at byte 128 whatever the file name, or by a
  ``.dcm``/``.dicom`` suffix: ``PixelSpacing`` is ``[row spacing, column spacing]`` = ``(sy, sx)``;
  it is preferred over ``ImagerPixelSpacing`` (detector plane, differs by the magnification) and
  ``NominalScannedPixelSpacing``. The modality LUT (``RescaleSlope``/``RescaleIntercept``) is
  applied, the VOI LUT (windowing) is not; ``MONOCHROME1`` is inverted within the range of the
  stored values (``BitsStored``, ``PixelRepresentation``) so bone is bright. Multi-frame files
  must hold one frame. Compressed transfer syntaxes are decoded by pydicom's decoder plugins
  (requirements.txt pins them): JPEG baseline/extended, JPEG lossless and JPEG-LS by
  pylibjpeg-libjpeg, JPEG 2000 by pylibjpeg-openjpeg, RLE by pylibjpeg-rle or pydicom itself
  (python-gdcm also works if installed); a missing one gives a clear error naming the transfer
  syntax. ``Modality`` is kept (:attr:`ImageRecord.modality`) for the trust checks of
  :mod:`scripts.trust`.
* NIfTI (nibabel): ``data[i, j, k]`` has ``i`` along x (columns) and ``j`` along y (rows), so the
  image is ``data[:, :, 0].T`` and the spacing ``(zooms[0], zooms[1])`` (converted to mm from the
  header's spatial unit; an unknown unit is taken as mm).
* MHA/MHD/NRRD/NHDR (SimpleITK): ``GetArrayFromImage`` is ``(z, y, x)`` or ``(y, x)``, the spacing
  ``GetSpacing()[:2]`` = ``(sx, sy)``.

A header spacing outside :data:`PLAUSIBLE_SPACING_MM` (0.01-5 mm/px) is ignored (no mm values)
and reported in :attr:`ImageRecord.spacing_problem`. 3D volumes are accepted only with a single slice. Any file that cannot be read (missing, empty,
unknown format, corrupt, non-finite values, ...) raises :class:`ImageReadError` naming the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES",
    "PLAUSIBLE_SPACING_MM",
    "ImageReadError",
    "ImageRecord",
    "image_suffix",
    "is_image_candidate",
    "read_image",
    "read_image_size",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

_PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
_ITK_RASTER_SUFFIXES = (".tif", ".tiff")
_DICOM_SUFFIXES = (".dcm", ".dicom")
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_ITK_VOLUME_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")

#: File name endings recognised as images (lower case; ``.nii.gz`` is one suffix). DICOM files
#: may also have no suffix at all: they are recognised by their ``DICM`` magic.
IMAGE_SUFFIXES: tuple[str, ...] = (
    _PIL_SUFFIXES + _ITK_RASTER_SUFFIXES + _DICOM_SUFFIXES + _NIFTI_SUFFIXES + _ITK_VOLUME_SUFFIXES
)

_LUMINANCE_RGB = np.array([0.299, 0.587, 0.114])
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DICOM_MAGIC_OFFSET = 128

#: ``(lowest, highest)`` pixel spacing in mm/px taken as real for a 2D radiograph (detectors are
#: about 0.05-0.2 mm/px, scanned film and thumbnails up to a few mm/px); a header spacing outside
#: is ignored (no mm values) and reported in :attr:`ImageRecord.spacing_problem`.
PLAUSIBLE_SPACING_MM = (0.01, 5.0)


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file and the problem."""


def _error(path: PathLike, problem: str) -> ImageReadError:
    return ImageReadError(f"{os.fspath(path)}: {problem}")


@dataclass
class ImageRecord:
    """A 2D image as read from a file.

    Attributes:
        array: ``(H, W)`` float32, indexed ``[row, column]`` (see :mod:`scripts.coords`).
        spacing: ``(sx, sy)`` mm per pixel along x (columns) and y (rows), or ``None`` if unknown.
        spacing_source: the header field the spacing came from, ``"unknown"`` without spacing.
        path: the file that was read.
        modality: the DICOM ``Modality`` (e.g. ``"DX"``, ``"CT"``), ``None`` for other formats or
            when absent.
        spacing_problem: why a spacing found in the header was not used (e.g. outside
            :data:`PLAUSIBLE_SPACING_MM`), ``None`` otherwise.
    """

    array: np.ndarray
    spacing: tuple[float, float] | None
    spacing_source: str
    path: str
    modality: str | None = None
    spacing_problem: str | None = None


def image_suffix(path: PathLike) -> str:
    """The recognised image suffix of ``path`` in lower case (e.g. ``".nii.gz"``), or ``""``."""
    name = Path(path).name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s) and len(name) > len(s)), "")


def _has_dicom_magic(path: PathLike) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(_DICOM_MAGIC_OFFSET + 4)
    except OSError:
        return False
    return head[_DICOM_MAGIC_OFFSET:] == b"DICM"


def is_image_candidate(path: PathLike) -> bool:
    """Whether a folder scan should treat ``path`` as an image: a regular, non-hidden file with a
    suffix from :data:`IMAGE_SUFFIXES`, or any other file starting with the DICOM magic."""
    p = Path(path)
    if p.name.startswith(".") or not p.is_file():
        return False
    return bool(image_suffix(p)) or _has_dicom_magic(p)


# ---------------------------------------------------------------------------------------------
# format detection


def _png_bit_depth_and_colour(path: PathLike) -> tuple[int, int] | None:
    """``(bit depth, colour type)`` from a PNG's IHDR, ``None`` if the file is no PNG."""
    with open(path, "rb") as f:
        head = f.read(26)
    if head[:8] != _PNG_SIGNATURE or len(head) < 26:
        return None
    return head[24], head[25]


def _backend(path: PathLike) -> str:
    """Name of the reader for ``path``: "dicom", "pil", "itk_raster", "nifti" or "itk"."""
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise _error(path, f"broken symbolic link (to {os.readlink(p)}, which does not exist)")
    if not p.exists():
        raise _error(path, "no such file")
    if not p.is_file():
        raise _error(path, "is not a regular file")
    if p.stat().st_size == 0:
        raise _error(path, "file is empty")
    suffix = image_suffix(p)
    if _has_dicom_magic(p) or suffix in _DICOM_SUFFIXES:
        return "dicom"
    if suffix in _PIL_SUFFIXES:
        # Pillow cuts 16-bit colour PNGs to 8 bits: read RGB(A) ones with SimpleITK instead
        png = _png_bit_depth_and_colour(p)
        if png == (16, 4):
            raise _error(path, "16-bit grey + alpha PNG is not supported; save it without alpha")
        return "itk_raster" if png in ((16, 2), (16, 6)) else "pil"
    if suffix in _ITK_RASTER_SUFFIXES:
        return "itk_raster"
    if suffix in _NIFTI_SUFFIXES:
        return "nifti"
    if suffix in _ITK_VOLUME_SUFFIXES:
        return "itk"
    raise _error(
        path,
        f"unknown image format: suffix {p.suffix or '(none)'!r} is not one of "
        f"{', '.join(IMAGE_SUFFIXES)} and the file has no DICOM magic",
    )


# ---------------------------------------------------------------------------------------------
# shared helpers


def _plane_shape(path: PathLike, shape_xy: tuple[int, ...], what: str) -> tuple[int, int]:
    """``(H, W)`` from a size ordered ``(x, y, z, ...)``; extra axes must have length 1."""
    if len(shape_xy) < 2:
        raise _error(path, f"{what} has {len(shape_xy)} dimension(s), expected a 2D image")
    if any(int(n) != 1 for n in shape_xy[2:]):
        raise _error(
            path,
            f"{what} has size {tuple(int(n) for n in shape_xy)} (x, y, ...): only 2D images or "
            "volumes with a single slice are supported",
        )
    w, h = int(shape_xy[0]), int(shape_xy[1])
    if h < 1 or w < 1:
        raise _error(path, f"{what} is empty (H x W = {h} x {w})")
    return h, w


def _to_grey(path: PathLike, pixels: np.ndarray, channels_last: bool) -> np.ndarray:
    """``(H, W)`` grey from ``(H, W)`` or ``(H, W, C)``: C = 2 grey + alpha, 3 RGB, 4 RGBA."""
    if pixels.ndim == 2:
        return pixels
    if pixels.ndim == 3 and channels_last:
        channels = pixels.shape[-1]
        if channels in (1, 2):
            return pixels[..., 0]
        if channels in (3, 4):
            return pixels[..., :3].astype(np.float64) @ _LUMINANCE_RGB
    raise _error(path, f"pixel array of shape {pixels.shape} is not a grey or RGB(A) image")


def _one_line(error: Exception, limit: int = 500) -> str:
    """A library's exception message on one line, shortened to ``limit`` characters."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())[:limit]


def _valid_spacing(path: PathLike, spacing_xy, source: str) -> tuple[float, float] | None:
    """``(sx, sy)`` as floats if both are finite and positive, else ``None`` with a warning."""
    try:
        sx, sy = (float(v) for v in spacing_xy)
    except (TypeError, ValueError):
        logger.warning("%s: ignoring malformed %s %r", os.fspath(path), source, spacing_xy)
        return None
    if not (np.isfinite(sx) and np.isfinite(sy) and sx > 0 and sy > 0):
        logger.warning("%s: ignoring invalid %s (sx, sy) = (%s, %s)", os.fspath(path), source, sx, sy)
        return None
    return sx, sy


# ---------------------------------------------------------------------------------------------
# Pillow: PNG and JPEG


def _warn_exif_rotation(path: PathLike, image) -> None:
    orientation = image.getexif().get(0x0112, 1)
    if orientation not in (1, None):
        logger.warning(
            "%s: EXIF orientation %s is ignored; pixels are used as stored", os.fspath(path), orientation
        )


def _pil_read(path: PathLike):
    from PIL import Image

    with Image.open(path) as image:
        if getattr(image, "n_frames", 1) > 1:
            raise _error(path, f"has {image.n_frames} frames; only single-frame images are supported")
        _warn_exif_rotation(path, image)
        image.load()
        mode = image.mode
        if mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
            pixels = np.asarray(image)
        elif mode in ("LA", "La"):
            pixels = np.asarray(image)[..., 0]
        elif mode in ("RGB", "RGBA", "RGBX", "RGBa"):
            pixels = np.asarray(image)
        else:  # palette, CMYK, YCbCr, LAB, HSV, ...
            pixels = np.asarray(image.convert("RGBA" if "A" in mode else "RGB"))
    return _to_grey(path, pixels, channels_last=True), None, "unknown"


def _pil_size(path: PathLike) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        if getattr(image, "n_frames", 1) > 1:
            raise _error(path, f"has {image.n_frames} frames; only single-frame images are supported")
        w, h = image.size
    return h, w


# ---------------------------------------------------------------------------------------------
# DICOM


def _dicom_dataset(path: PathLike, header_only: bool):
    import pydicom

    ds = pydicom.dcmread(path, force=True, stop_before_pixels=header_only)
    if "Rows" not in ds or "Columns" not in ds:
        raise _error(path, "DICOM header has no Rows/Columns (not a DICOM image?)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise _error(path, f"DICOM has {frames} frames; only single-frame images are supported")
    return ds


def _dicom_size(path: PathLike) -> tuple[int, int]:
    ds = _dicom_dataset(path, header_only=True)
    return _plane_shape(path, (int(ds.Columns), int(ds.Rows)), "DICOM image")


def _dicom_spacing(path: PathLike, ds) -> tuple[tuple[float, float] | None, str]:
    """``(sx, sy)`` and the tag it came from; DICOM spacings are ``[row, column]`` = ``(sy, sx)``."""
    candidates = [(name, ds.get(name)) for name in ("PixelSpacing", "ImagerPixelSpacing")]
    try:  # enhanced objects keep PixelSpacing in the shared functional groups
        measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        candidates.insert(1, ("PixelSpacing", measures.get("PixelSpacing")))
    except (AttributeError, IndexError, KeyError):
        pass
    candidates.append(("NominalScannedPixelSpacing", ds.get("NominalScannedPixelSpacing")))
    for name, value in candidates:
        if value is None:
            continue
        if not hasattr(value, "__len__") or len(value) != 2:
            logger.warning("%s: ignoring %s %r (expected 2 values)", os.fspath(path), name, value)
            continue
        spacing = _valid_spacing(path, (value[1], value[0]), name)
        if spacing is not None:
            return spacing, name
    return None, "unknown"


def _dicom_pixels(path: PathLike, ds) -> np.ndarray:
    transfer_syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        return ds.pixel_array
    except Exception as e:
        detail = _one_line(e)
        if transfer_syntax is not None and transfer_syntax.is_compressed:
            raise _error(
                path,
                f"cannot decode DICOM pixel data in transfer syntax {transfer_syntax.name} "
                f"({transfer_syntax}): {detail}. If a decoder is missing, install the pydicom "
                "decoder plugins pinned in requirements.txt (pylibjpeg with pylibjpeg-libjpeg for JPEG "
                "and JPEG-LS, pylibjpeg-openjpeg for JPEG 2000, pylibjpeg-rle for RLE), or python-gdcm",
            ) from e
        raise _error(path, f"cannot decode DICOM pixel data: {type(e).__name__}: {detail}") from e


def _dicom_read(path: PathLike):
    try:
        from pydicom.pixels import apply_color_lut, apply_modality_lut
    except ImportError:  # pydicom 2.x, e.g. beside MONAI Label (pydicom-seg needs pydicom < 3)
        from pydicom.pixel_data_handlers.util import apply_color_lut, apply_modality_lut

    ds = _dicom_dataset(path, header_only=False)
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise _error(path, "DICOM has no pixel data")
    pixels = _dicom_pixels(path, ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
    if pixels.ndim == 3:
        grey = _to_grey(path, pixels, channels_last=True)
    else:
        grey = apply_modality_lut(pixels, ds).astype(np.float64)
        if photometric == "MONOCHROME1":
            if "PixelData" in ds:  # integer stored values: invert within their representable range
                bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
                signed = int(ds.get("PixelRepresentation", 0)) == 1
                lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
                ends = apply_modality_lut(np.array([lo, hi], dtype=np.int64), ds)
                lo, hi = float(np.min(ends)), float(np.max(ends))
            else:  # float pixel data has no stored range: use the data range
                lo, hi = float(np.min(grey)), float(np.max(grey))
            grey = (lo + hi) - grey
    spacing, source = _dicom_spacing(path, ds)
    modality = str(ds.get("Modality", "") or "").strip().upper() or None
    return grey, spacing, source, {"modality": modality}


# ---------------------------------------------------------------------------------------------
# NIfTI


def _nifti_load(path: PathLike):
    import nibabel as nib

    image = nib.load(os.fspath(path))
    return image, _plane_shape(path, image.shape, "NIfTI image")


def _nifti_size(path: PathLike) -> tuple[int, int]:
    return _nifti_load(path)[1]


def _nifti_read(path: PathLike):
    image, (h, w) = _nifti_load(path)
    data = np.asarray(image.get_fdata(dtype=np.float32)).reshape(w, h)  # [i, j] = [x, y]
    header = image.header
    unit = header.get_xyzt_units()[0] if hasattr(header, "get_xyzt_units") else "unknown"
    to_mm = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3}.get(unit, 1.0)
    zooms = header.get_zooms()
    spacing = _valid_spacing(path, (zooms[0] * to_mm, zooms[1] * to_mm), "NIfTI pixdim")
    return data.T, spacing, "header" if spacing else "unknown"


# ---------------------------------------------------------------------------------------------
# SimpleITK: MHA/MHD, NRRD/NHDR, TIFF and 16-bit colour PNG


def _itk_size(path: PathLike) -> tuple[int, int]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(os.fspath(path))
    reader.ReadImageInformation()
    return _plane_shape(path, reader.GetSize(), "image")


def _itk_read(path: PathLike, with_spacing: bool):
    import SimpleITK as sitk

    image = sitk.ReadImage(os.fspath(path))
    h, w = _plane_shape(path, image.GetSize(), "image")
    channels = image.GetNumberOfComponentsPerPixel()
    pixels = sitk.GetArrayFromImage(image)  # (z, y, x[, c]) or (y, x[, c])
    pixels = pixels.reshape((h, w, channels) if channels > 1 else (h, w))
    if not with_spacing:
        return _to_grey(path, pixels, channels_last=True), None, "unknown"
    spacing = _valid_spacing(path, image.GetSpacing()[:2], "header spacing")
    return _to_grey(path, pixels, channels_last=True), spacing, "header" if spacing else "unknown"


# ---------------------------------------------------------------------------------------------
# public API

_READERS: dict[str, Callable] = {
    "pil": _pil_read,
    "dicom": _dicom_read,
    "nifti": _nifti_read,
    "itk": lambda path: _itk_read(path, with_spacing=True),
    "itk_raster": lambda path: _itk_read(path, with_spacing=False),
}
_SIZE_READERS: dict[str, Callable] = {
    "pil": _pil_size,
    "dicom": _dicom_size,
    "nifti": _nifti_size,
    "itk": _itk_size,
    "itk_raster": _itk_size,
}
_FORMAT_NAMES = {
    "pil": "PNG/JPEG",
    "dicom": "DICOM",
    "nifti": "NIfTI",
    "itk": "MHA/MHD/NRRD",
    "itk_raster": "TIFF/PNG",
}


def _truncation(path: PathLike) -> str | None:
    """What is missing at the end of a PNG or JPEG file that was cut short, ``None`` if it ends properly."""
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(max(0, os.fstat(f.fileno()).st_size - 12))
        tail = f.read()
    if head == _PNG_SIGNATURE and b"IEND" not in tail:
        return "the PNG file is truncated (it has no IEND chunk at its end)"
    if head[:2] == b"\xff\xd8" and b"\xff\xd9" not in tail:
        return "the JPEG file is truncated (it has no end-of-image marker)"
    return None


def _call(path: PathLike, backend: str, readers: dict[str, Callable]):
    """Run a reader, turning any library exception into an :class:`ImageReadError`."""
    try:
        return readers[backend](path)
    except ImageReadError:
        raise
    except Exception as e:
        truncated = _truncation(path) if backend in ("pil", "itk_raster") else None
        if truncated:
            raise _error(path, f"{truncated}: {type(e).__name__}: {_one_line(e, 200)}") from e
        raise _error(
            path,
            f"cannot read as {_FORMAT_NAMES[backend]} (corrupt or unsupported file?): "
            f"{type(e).__name__}: {_one_line(e)}",
        ) from e


def _plausible_spacing(spacing, source: str) -> tuple[tuple[float, float] | None, str, str | None]:
    """``(spacing, source, problem)``: a spacing outside :data:`PLAUSIBLE_SPACING_MM` is dropped."""
    low, high = PLAUSIBLE_SPACING_MM
    if spacing is None or all(low <= v <= high for v in spacing):
        return spacing, source, None
    problem = (f"{source} spacing (sx, sy) = ({spacing[0]:.6g}, {spacing[1]:.6g}) mm/px is outside the plausible "
               f"{low:g}-{high:g} mm/px: ignored, no mm values")
    return None, "unknown", problem


def read_image(path: PathLike) -> ImageRecord:
    """Read a 2D image file into an :class:`ImageRecord` with an ``(H, W)`` float32 array.

    Args:
        path: a PNG, JPEG, TIFF, DICOM (any name), NIfTI, MHA/MHD or NRRD/NHDR file.

    Returns:
        the image ``[row, column]`` as stored, its spacing ``(sx, sy)`` mm/px or ``None`` and the
        spacing's source (see the module docstring for each format's rules).

    Raises:
        ImageReadError: the file is missing, empty, of unknown format, corrupt (a PNG/JPEG cut short
            is named as truncated), not a single 2D image, a broken symbolic link, or holds
            non-finite values; the message names the file.
    """
    backend = _backend(path)
    pixels, spacing, source, *extra = _call(path, backend, _READERS)
    header = extra[0] if extra else {}
    spacing, source, spacing_problem = _plausible_spacing(spacing, source)
    if spacing_problem:
        logger.warning("%s: %s", os.fspath(path), spacing_problem)
    array = np.ascontiguousarray(pixels, dtype=np.float32)
    if array.ndim != 2:
        raise _error(path, f"expected a 2D image, got pixel array of shape {array.shape}")
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise _error(path, f"image contains {bad} non-finite (NaN or infinite) values")
    return ImageRecord(array=array, spacing=spacing, spacing_source=source, path=os.fspath(path),
                       modality=header.get("modality"), spacing_problem=spacing_problem)


def read_image_size(path: PathLike) -> tuple[int, int]:
    """``(H, W)`` of a 2D image file, from its header alone where the format allows.

    Agrees with ``read_image(path).array.shape``; raises :class:`ImageReadError` like it.
    """
    return _call(path, _backend(path), _SIZE_READERS)
