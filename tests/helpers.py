"""Helpers shared by the tests: writing small real image files."""

from __future__ import annotations

import os

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

__all__ = ["write_dicom", "DX_FOR_PRESENTATION"]

#: SOP class "Digital X-Ray Image Storage - For Presentation".
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def write_dicom(path, array, *, preamble: bool = True, transfer_syntax=ExplicitVRLittleEndian, **tags) -> str:
    """Write a single-frame greyscale DICOM file and return its path.

    Args:
        path: file to write (any name; no ``.dcm`` suffix needed).
        array: ``(H, W)`` integer pixels ``[row, column]``; uint8/uint16 are stored unsigned,
            int8/int16 signed, always with BitsAllocated 16.
        preamble: write the 128-byte preamble and ``DICM`` magic (False: a bare dataset).
        transfer_syntax: transfer syntax UID; compressed ones are encoded with pydicom's own
            encoders (e.g. ``RLELossless``).
        tags: DICOM keywords set on the dataset after the defaults, e.g.
            ``PixelSpacing=[0.2, 0.1]``, ``PhotometricInterpretation="MONOCHROME1"``,
            ``BitsStored=12``, ``RescaleSlope=2``; a value of ``None`` removes the element
            (``PixelData=None`` writes a file without pixel data).
    """
    pixels = np.asarray(array)
    if pixels.ndim != 2 or pixels.dtype.kind not in "iu":
        raise ValueError(f"write_dicom expects a 2D integer array, got {pixels.dtype} {pixels.shape}")
    signed = pixels.dtype.kind == "i"
    stored = pixels.astype(np.int16 if signed else np.uint16)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = FileDataset(os.fspath(path), {}, file_meta=meta, preamble=b"\0" * 128 if preamble else None)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = int(signed)
    ds.PixelData = stored.tobytes()
    for keyword, value in tags.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    if "BitsStored" in tags and "HighBit" not in tags:
        ds.HighBit = int(ds.BitsStored) - 1
    if transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax, stored)
    ds.save_as(os.fspath(path), enforce_file_format=preamble)
    return os.fspath(path)
