"""Small uncompressed DICOM files written in tmp_path, for the imaging and serve tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def write_dicom(
    path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **elements
) -> Path:
    """An uncompressed DICOM of `pixels` (uint8 or uint16), with extra tags."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    bits = 8 if pixels.dtype == np.uint8 else 12
    ds.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits)
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path
