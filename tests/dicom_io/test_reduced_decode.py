"""Reduced-resolution decoding: the codec does the downscaling, and the tensor stays close."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dicom_io.pixels import DecodeOptions, decode, prepare_file, read_dataset
from dicom_io.synthetic import StudySpec, make_instance
from tests.dicom_io.corpus import eight_bit

FULL = DecodeOptions(reduced_decode=False)


@pytest.fixture(scope="module")
def jpeg_baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("dcmcjpeg") is None:
        pytest.skip("DCMTK's dcmcjpeg is not installed (Debian package dcmtk)")
    folder = tmp_path_factory.mktemp("jpeg")
    source = eight_bit(make_instance(StudySpec(views=1, rows=1100, columns=1300, bits_stored=8, seed=4), 0))
    source.save_as(folder / "source.dcm", enforce_file_format=True)
    subprocess.run(["dcmcjpeg", "+eb", str(folder / "source.dcm"), str(folder / "jpeg.dcm")],
                   check=True, capture_output=True)
    return folder / "jpeg.dcm"


@pytest.mark.integration
def test_jpeg_baseline_is_decoded_at_a_dct_scale(jpeg_baseline: Path) -> None:
    ds = read_dataset(jpeg_baseline)
    assert decode(ds, FULL).shape == (1, 1100, 1300)
    assert decode(ds, DecodeOptions()).shape == (1, 550, 650)  # 1/2: the shorter side stays >= 512
    assert decode(ds, DecodeOptions(working_size=256)).shape == (1, 275, 325)  # 1/4


@pytest.mark.integration
def test_jpeg_baseline_scaled_is_close_to_full(jpeg_baseline: Path) -> None:
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)[:, None, None]
    reduced = prepare_file(jpeg_baseline) * std
    full = prepare_file(jpeg_baseline, opts=FULL) * std
    diff = np.abs(reduced - full).mean()
    assert diff < 0.01, f"mean |diff| {diff:.4f} of the grey range"
    assert not np.array_equal(reduced, full)
