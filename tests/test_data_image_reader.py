"""Tests of scripts.data.image_reader on real files of every supported format written to tmp_path."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom import uid
from pydicom.uid import JPEGLSLossless, RLELossless

from scripts.data.image_reader import (
    IMAGE_SUFFIXES,
    ImageReadError,
    image_suffix,
    is_image_candidate,
    read_image,
    read_image_size,
)
from tests.helpers import write_compressed_dicom, write_dicom

H, W = 6, 9  # non-square on purpose
ROW, COL = 1, 7  # a distinctive pixel far from the diagonal


def reference_image(peak: int = 4000, dtype=np.uint16) -> np.ndarray:
    """(H, W) ramp with one bright pixel at [ROW, COL]."""
    image = (np.arange(H * W).reshape(H, W) * 10).astype(dtype)
    image[ROW, COL] = peak
    return image


# ---------------------------------------------------------------------------------------------
# writers: each returns (path, expected array, expected spacing, expected spacing source)


def _dicom(tmp_path):
    image = reference_image()
    path = write_dicom(tmp_path / "xray.dcm", image, PixelSpacing=[0.2, 0.1])
    return path, image, (0.1, 0.2), "PixelSpacing"


def _png8(tmp_path):
    image = reference_image(peak=255, dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    return tmp_path / "a.png", image, None, "unknown"


def _png16(tmp_path):
    image = reference_image(peak=40000)
    Image.fromarray(image).save(tmp_path / "a16.png")
    return tmp_path / "a16.png", image, None, "unknown"


def _jpeg(tmp_path):
    image = np.full((H, W), 120, dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.jpg", quality=95)
    return tmp_path / "a.jpg", image, None, "unknown"


def _tiff16(tmp_path):
    image = reference_image(peak=50000)
    sitk.WriteImage(sitk.GetImageFromArray(image), str(tmp_path / "a.tif"))
    return tmp_path / "a.tif", image, None, "unknown"


def _nifti(tmp_path, name="a.nii.gz"):
    image = reference_image().astype(np.float32)
    # NIfTI voxel [i, j, k]: i along x (columns), j along y (rows)
    nifti = nib.Nifti1Image(image.T[:, :, None], affine=np.diag([0.3, 0.4, 1.0, 1.0]))
    nifti.header.set_xyzt_units("mm")
    nib.save(nifti, str(tmp_path / name))
    return tmp_path / name, image, (0.3, 0.4), "header"


def _mha(tmp_path):
    image = reference_image()
    itk = sitk.GetImageFromArray(image[None])  # (z, y, x) with one slice
    itk.SetSpacing((0.3, 0.4, 1.0))
    sitk.WriteImage(itk, str(tmp_path / "a.mha"))
    return tmp_path / "a.mha", image, (0.3, 0.4), "header"


def _mhd(tmp_path):
    image = reference_image().astype(np.int16) - 100
    itk = sitk.GetImageFromArray(image)
    itk.SetSpacing((0.25, 0.5))
    sitk.WriteImage(itk, str(tmp_path / "a.mhd"))  # writes a.mhd + a.raw
    return tmp_path / "a.mhd", image, (0.25, 0.5), "header"


def _nrrd(tmp_path):
    image = reference_image()
    itk = sitk.GetImageFromArray(image)
    itk.SetSpacing((0.15, 0.35))
    sitk.WriteImage(itk, str(tmp_path / "a.nrrd"))
    return tmp_path / "a.nrrd", image, (0.15, 0.35), "header"


WRITERS = {
    "dicom": _dicom,
    "png8": _png8,
    "png16": _png16,
    "jpeg": _jpeg,
    "tiff16": _tiff16,
    "nifti": _nifti,
    "mha": _mha,
    "mhd": _mhd,
    "nrrd": _nrrd,
}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_roundtrip_every_format(tmp_path, fmt):
    path, expected, spacing, source = WRITERS[fmt](tmp_path)
    record = read_image(path)
    assert record.array.dtype == np.float32 and record.array.shape == (H, W)
    tolerance = 2.0 if fmt == "jpeg" else 0.0  # lossy
    np.testing.assert_allclose(record.array, expected.astype(np.float64), atol=tolerance)
    if fmt != "jpeg":
        assert record.array[ROW, COL] == expected[ROW, COL] == expected.max()
    if spacing is None:
        assert record.spacing is None
    else:
        np.testing.assert_allclose(record.spacing, spacing, rtol=1e-6)
    assert record.spacing_source == source
    assert record.path == str(path)
    assert read_image_size(path) == record.array.shape


# ---------------------------------------------------------------------------------------------
# DICOM


def test_dicom_imager_pixel_spacing_only(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", reference_image(), ImagerPixelSpacing=[0.15, 0.12])
    record = read_image(path)
    np.testing.assert_allclose(record.spacing, (0.12, 0.15))
    assert record.spacing_source == "ImagerPixelSpacing"


def test_dicom_prefers_pixel_spacing_over_imager_spacing(tmp_path):
    path = write_dicom(
        tmp_path / "a.dcm", reference_image(), PixelSpacing=[0.2, 0.1], ImagerPixelSpacing=[0.24, 0.12]
    )
    record = read_image(path)
    np.testing.assert_allclose(record.spacing, (0.1, 0.2))
    assert record.spacing_source == "PixelSpacing"


def test_dicom_without_spacing_or_with_invalid_spacing(tmp_path):
    plain = write_dicom(tmp_path / "a.dcm", reference_image())
    zero = write_dicom(
        tmp_path / "b.dcm", reference_image(), PixelSpacing=[0, 0], ImagerPixelSpacing=[0.3, 0.3]
    )
    assert (read_image(plain).spacing, read_image(plain).spacing_source) == (None, "unknown")
    assert (read_image(zero).spacing, read_image(zero).spacing_source) == ((0.3, 0.3), "ImagerPixelSpacing")


def test_dicom_monochrome1_is_inverted_within_stored_range(tmp_path):
    stored = np.array([[0, 100, 4095], [2000, 7, 1]], dtype=np.uint16)
    path = write_dicom(tmp_path / "m1.dcm", stored, PhotometricInterpretation="MONOCHROME1", BitsStored=12)
    np.testing.assert_array_equal(read_image(path).array, 4095.0 - stored)


def test_dicom_rescale_slope_intercept(tmp_path):
    stored = np.array([[0, 500, 1000]], dtype=np.uint16)
    path = write_dicom(tmp_path / "r.dcm", stored, RescaleSlope=2, RescaleIntercept=-1000)
    np.testing.assert_array_equal(read_image(path).array, [[-1000.0, 0.0, 1000.0]])


def test_dicom_monochrome1_with_rescale(tmp_path):
    # stored range [0, 255] maps to [-10, 500]; inversion happens in the rescaled range
    stored = np.array([[0, 10, 255]], dtype=np.uint16)
    path = write_dicom(
        tmp_path / "a.dcm", stored, PhotometricInterpretation="MONOCHROME1", BitsStored=8,
        RescaleSlope=2, RescaleIntercept=-10,
    )
    np.testing.assert_array_equal(read_image(path).array, [[500.0, 480.0, -10.0]])


def test_dicom_signed_pixels(tmp_path):
    stored = np.array([[-1000, 0, 1200]], dtype=np.int16)
    path = write_dicom(tmp_path / "s.dcm", stored)
    np.testing.assert_array_equal(read_image(path).array, stored)


@pytest.mark.parametrize("name", ["IM0001", "1.2.840.113619.2.55.3.1"])
def test_dicom_detected_by_magic_whatever_the_name(tmp_path, name):
    image = reference_image()
    path = write_dicom(tmp_path / name, image, PixelSpacing=[0.5, 0.5])
    np.testing.assert_array_equal(read_image(path).array, image)
    assert read_image_size(path) == (H, W)
    assert is_image_candidate(path)


def test_dicom_without_preamble_read_by_suffix(tmp_path):
    image = reference_image()
    path = write_dicom(tmp_path / "bare.dcm", image, preamble=False)
    with open(path, "rb") as f:
        assert f.read(132)[128:] != b"DICM"
    np.testing.assert_array_equal(read_image(path).array, image)


def test_dicom_without_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "nopix.dcm", reference_image(), PixelData=None)
    with pytest.raises(ImageReadError, match=r"nopix\.dcm.*has no pixel data"):
        read_image(path)
    assert read_image_size(path) == (H, W)  # the header alone is fine


def test_dicom_multi_frame_is_refused(tmp_path):
    frames = np.concatenate([reference_image(), reference_image()])
    path = write_dicom(
        tmp_path / "multi.dcm", reference_image(), NumberOfFrames=2, PixelData=frames.tobytes()
    )
    for reader in (read_image, read_image_size):
        with pytest.raises(ImageReadError, match=r"multi\.dcm.*2 frames"):
            reader(path)


def test_dicom_rle_compressed(tmp_path):
    image = reference_image()
    path = write_dicom(tmp_path / "rle.dcm", image, transfer_syntax=RLELossless)
    np.testing.assert_array_equal(read_image(path).array, image)


def radiograph_12bit(hw=(96, 80), seed=0) -> np.ndarray:
    """Smooth anatomy-like structure plus noise, 12-bit stored in uint16 (compresses like a radiograph)."""
    rows, cols = np.mgrid[: hw[0], : hw[1]]
    noise = np.random.default_rng(seed).normal(0, 40, hw)
    image = 1800 + 900 * np.sin(cols / 9.0) * np.cos(rows / 13.0) + noise
    image[10:30, 20:26] = 4095  # a bright edge (metal)
    return np.clip(image, 0, 4095).astype(np.uint16)


LOSSLESS_SYNTAXES = [uid.JPEGLosslessSV1, uid.JPEGLSLossless, uid.JPEG2000Lossless, uid.JPEG2000, uid.RLELossless]


@pytest.mark.parametrize("syntax", LOSSLESS_SYNTAXES, ids=lambda s: s.name)
def test_compressed_dicom_decodes_to_the_uncompressed_pixels(tmp_path, syntax):
    """Each transfer syntax radiographs come in, encoded by a real codec, reads back exactly as the
    uncompressed file does (JPEG 2000 under its general UID encoded reversibly)."""
    image = radiograph_12bit()
    plain = read_image(write_dicom(tmp_path / "plain.dcm", image, BitsStored=12, PixelSpacing=[0.2, 0.1]))
    path = write_compressed_dicom(tmp_path / "packed.dcm", image, syntax, BitsStored=12, PixelSpacing=[0.2, 0.1])
    import pydicom

    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == syntax and len(ds.PixelData) < image.nbytes  # really compressed
    record = read_image(path)
    np.testing.assert_array_equal(record.array, image.astype(np.float32))
    np.testing.assert_array_equal(record.array, plain.array)
    assert record.spacing == plain.spacing == (0.1, 0.2)


@pytest.mark.parametrize("syntax", [uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit], ids=lambda s: s.name)
def test_lossy_jpeg_dicom_decodes_close_to_the_original(tmp_path, syntax):
    image = radiograph_12bit()
    if syntax == uid.JPEGBaseline8Bit:
        image = (image >> 4).astype(np.uint8)
        path = write_compressed_dicom(tmp_path / "lossy.dcm", image, syntax)
    else:
        path = write_compressed_dicom(tmp_path / "lossy.dcm", image, syntax, BitsStored=12)
    decoded = read_image(path).array
    error = np.abs(decoded - image.astype(np.float32))
    top = 255 if image.dtype == np.uint8 else 4095
    assert decoded.shape == image.shape and error.mean() < 0.02 * top and error.max() < 0.25 * top


def test_dicom_modality_is_kept(tmp_path):
    assert read_image(write_dicom(tmp_path / "ct.dcm", reference_image(), Modality="CT")).modality == "CT"
    assert read_image(write_dicom(tmp_path / "none.dcm", reference_image(), Modality=None)).modality is None


@pytest.mark.parametrize("spacing", [[1e30, 1e30], [0.001, 0.001], [10.0, 0.1]])
def test_implausible_dicom_spacing_is_ignored_and_reported(tmp_path, spacing):
    record = read_image(write_dicom(tmp_path / "odd.dcm", reference_image(), PixelSpacing=spacing))
    assert record.spacing is None and record.spacing_source == "unknown"
    assert "outside the plausible 0.01-5 mm/px" in record.spacing_problem and "PixelSpacing" in record.spacing_problem
    fine = read_image(write_dicom(tmp_path / "fine.dcm", reference_image(), PixelSpacing=[0.01, 5.0]))
    assert fine.spacing == (5.0, 0.01) and fine.spacing_problem is None


def test_dicom_missing_decoder_is_explained(tmp_path):
    import pydicom

    path = write_dicom(tmp_path / "jls.dcm", reference_image())
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8 not a real JPEG-LS stream \xff\xd9"])
    ds.save_as(path)
    with pytest.raises(ImageReadError, match=r"jls\.dcm.*JPEG-LS.*decoder"):
        read_image(path)


# ---------------------------------------------------------------------------------------------
# PNG / JPEG details


def test_png_rgb_is_converted_to_luminance(tmp_path):
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    rgb[ROW, COL] = (200, 100, 50)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    array = read_image(tmp_path / "rgb.png").array
    assert array.shape == (H, W)
    assert array[ROW, COL] == pytest.approx(0.299 * 200 + 0.587 * 100 + 0.114 * 50, abs=1e-3)
    assert np.count_nonzero(array) == 1


def test_png_grey_alpha_and_rgba(tmp_path):
    grey = reference_image(peak=255, dtype=np.uint8)
    Image.fromarray(np.stack([grey, np.full_like(grey, 128)], -1), mode="LA").save(tmp_path / "la.png")
    rgba = np.stack([grey, grey, grey, np.full_like(grey, 7)], -1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png").array, grey)
    np.testing.assert_allclose(read_image(tmp_path / "rgba.png").array, grey, atol=1e-3)


def test_png_16bit_rgb_keeps_16_bits(tmp_path):
    rgb = np.zeros((H, W, 3), dtype=np.uint16)
    rgb[ROW, COL] = (40000, 40000, 40000)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "rgb16.png"))
    array = read_image(tmp_path / "rgb16.png").array
    assert array.shape == (H, W) and array[ROW, COL] == pytest.approx(40000, abs=0.1)


def test_png_16bit_grey_alpha_is_refused(tmp_path):
    la = np.zeros((H, W, 2), dtype=np.uint16)
    sitk.WriteImage(sitk.GetImageFromArray(la, isVector=True), str(tmp_path / "la16.png"))
    with pytest.raises(ImageReadError, match=r"la16\.png.*grey \+ alpha"):
        read_image(tmp_path / "la16.png")


def test_jpeg_8bit_keeps_structure(tmp_path):
    image = np.zeros((32, 48), dtype=np.uint8)
    image[8:16, 30:40] = 200
    Image.fromarray(image).save(tmp_path / "x.jpeg", quality=95)
    array = read_image(tmp_path / "x.jpeg").array
    assert array.shape == (32, 48) and array.max() <= 255
    assert array[12, 35] > 180 and array[12, 5] < 20


# ---------------------------------------------------------------------------------------------
# NIfTI / ITK details


def test_nifti_2d_and_uncompressed(tmp_path):
    image = reference_image().astype(np.float32)
    nib.save(nib.Nifti1Image(image.T, affine=np.eye(4)), str(tmp_path / "flat.nii"))
    record = read_image(tmp_path / "flat.nii")
    np.testing.assert_array_equal(record.array, image)
    assert record.array[ROW, COL] == 4000 and read_image_size(tmp_path / "flat.nii") == (H, W)


def test_nifti_spacing_in_metres_converted_to_mm(tmp_path):
    nifti = nib.Nifti1Image(reference_image().T.astype(np.float32), affine=np.diag([2e-4, 3e-4, 1e-3, 1]))
    nifti.header.set_xyzt_units("meter")
    nib.save(nifti, str(tmp_path / "m.nii"))
    np.testing.assert_allclose(read_image(tmp_path / "m.nii").spacing, (0.2, 0.3), rtol=1e-5)


def test_multi_slice_volumes_are_refused(tmp_path):
    volume = np.zeros((W, H, 3), dtype=np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(tmp_path / "vol.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, H, W), np.uint8)), str(tmp_path / "vol.mha"))
    for name in ("vol.nii.gz", "vol.mha"):
        for reader in (read_image, read_image_size):
            with pytest.raises(ImageReadError, match=rf"{name.replace('.', r'[.]')}.*single slice"):
                reader(tmp_path / name)


def test_non_finite_values_are_refused(tmp_path):
    image = reference_image().astype(np.float32)
    image[2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(image), str(tmp_path / "nan.mha"))
    with pytest.raises(ImageReadError, match=r"nan\.mha.*1 non-finite"):
        read_image(tmp_path / "nan.mha")


# ---------------------------------------------------------------------------------------------
# bad files


def _bad_file(tmp_path, kind):
    if kind == "missing":
        return tmp_path / "missing.png", "no such file"
    if kind == "empty":
        (tmp_path / "empty.png").write_bytes(b"")
        return tmp_path / "empty.png", "empty"
    if kind == "text_png":
        (tmp_path / "notes.png").write_text("id,x0,y0\n1,2,3\n")
        return tmp_path / "notes.png", "cannot read as PNG/JPEG"
    if kind == "text_txt":
        (tmp_path / "notes.txt").write_text("hello")
        return tmp_path / "notes.txt", "unknown image format"
    if kind == "text_no_suffix":
        (tmp_path / "notes").write_text("hello" * 50)
        return tmp_path / "notes", "unknown image format"
    if kind == "truncated_png":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(
            tmp_path / "cut.png"
        )
        data = (tmp_path / "cut.png").read_bytes()
        (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
        return tmp_path / "cut.png", "PNG file is truncated"
    if kind == "truncated_png_chunk":  # cut inside a chunk header: Pillow's own message is a bare struct error
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "cut.png")
        (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:35])
        return tmp_path / "cut.png", "PNG file is truncated"
    if kind == "truncated_jpeg":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "cut.jpg")
        data = (tmp_path / "cut.jpg").read_bytes()
        (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
        return tmp_path / "cut.jpg", "JPEG file is truncated"
    if kind == "dangling_symlink":
        (tmp_path / "gone.png").symlink_to(tmp_path / "deleted.png")
        return tmp_path / "gone.png", "broken symbolic link"
    if kind == "garbage_dcm":
        (tmp_path / "junk.dcm").write_bytes(b"\x00\x01garbage" * 20)
        return tmp_path / "junk.dcm", "DICOM"
    if kind == "garbage_nifti":
        (tmp_path / "junk.nii").write_bytes(b"not nifti" * 100)
        return tmp_path / "junk.nii", "cannot read as NIfTI"
    if kind == "garbage_mha":
        (tmp_path / "junk.mha").write_text("ObjectType = Image\nNDims = 2\n")
        return tmp_path / "junk.mha", "cannot read as MHA/MHD/NRRD"
    raise AssertionError(kind)


BAD_KINDS = [
    "missing", "empty", "text_png", "text_txt", "text_no_suffix", "truncated_png", "truncated_png_chunk",
    "truncated_jpeg", "dangling_symlink", "garbage_dcm", "garbage_nifti", "garbage_mha",
]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_files_raise_image_read_error_naming_the_file(tmp_path, kind):
    path, problem = _bad_file(tmp_path, kind)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(path) in str(info.value) and problem in str(info.value)
    assert isinstance(info.value, ValueError)
    if kind not in ("truncated_png", "truncated_jpeg"):  # their headers are intact
        with pytest.raises(ImageReadError, match=path.name):
            read_image_size(path)


# ---------------------------------------------------------------------------------------------
# folder-scan helpers


def test_image_suffix_and_candidates(tmp_path):
    assert image_suffix("a/b/3143.JPG") == ".jpg"
    assert image_suffix("scan.nii.gz") == ".nii.gz"
    assert image_suffix("scan.gz") == image_suffix("IM0001") == image_suffix(".png") == ""
    assert set(IMAGE_SUFFIXES) >= {".png", ".jpg", ".jpeg", ".dcm", ".nii", ".nii.gz", ".mha", ".nrrd"}
    _mhd(tmp_path)  # a.mhd + a.raw
    write_dicom(tmp_path / "IM0001", reference_image())
    (tmp_path / "README").write_text("x" * 200)
    (tmp_path / ".hidden.png").write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    found = sorted(p.name for p in tmp_path.iterdir() if is_image_candidate(p))
    assert found == ["IM0001", "a.mhd"]
