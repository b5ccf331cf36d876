"""Reduced-resolution decoding: faster, never another tensor.

A lossless JPEG 2000 / HTJ2K view is decoded only to the resolution level its working image is
made from (``dicom_io.pixels.reversible_low_pass``), so it is faster and gives exactly the tensor
of a full decode. Where a resolution level would be another image (lossy codestreams, JPEG's DCT
scaling, sizes Pillow cannot reduce) the view is decoded in full.
``tests/dicom_io/test_same_pixels.py`` compares every encoding on realistic images.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid

from dicom_io.pixels import (
    DecodeOptions,
    decode,
    pillow_can_reduce,
    prepare_file,
    read_dataset,
)
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


def j2k_lossless(folder: Path, rows: int, columns: int) -> Path:
    ds = make_instance(StudySpec(views=1, rows=rows, columns=columns, bits_stored=12, seed=5), 0)
    ds.compress(uid.JPEG2000Lossless, encoding_plugin="pylibjpeg")
    path = folder / f"j2k-{rows}x{columns}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.integration
def test_jpeg_baseline_is_decoded_in_full(jpeg_baseline: Path) -> None:
    """libjpeg's DCT scaling is another filter than the working image's: it is not used."""
    ds = read_dataset(jpeg_baseline)
    assert decode(ds, DecodeOptions()).shape == (1, 1100, 1300)
    assert np.array_equal(prepare_file(jpeg_baseline), prepare_file(jpeg_baseline, opts=FULL))


@pytest.mark.parametrize(("rows", "columns", "working_size", "level_shape"), [
    (1100, 1300, 512, (550, 650)),  # one level
    (1031, 1030, 256, (258, 258)),  # two levels, odd rows: ceil(1031 / 4)
])
def test_j2k_lossless_is_decoded_at_a_level_to_the_same_tensor(tmp_path: Path, rows: int, columns: int,
                                                               working_size: int,
                                                               level_shape: tuple[int, int]) -> None:
    path = j2k_lossless(tmp_path, rows, columns)
    opts = DecodeOptions(working_size=working_size)
    assert decode(read_dataset(path), opts).shape == (1, *level_shape)
    full = DecodeOptions(working_size=working_size, reduced_decode=False)
    assert decode(read_dataset(path), full).shape == (1, rows, columns)
    assert np.array_equal(prepare_file(path, opts=opts), prepare_file(path, opts=full))


def test_sizes_pillow_cannot_reduce_are_decoded_in_full(tmp_path: Path) -> None:
    """Pillow sizes level 2 of 1029 rows as 257 where OpenJPEG makes 258, and refuses it."""
    assert not pillow_can_reduce(1029, 1030, 2) and pillow_can_reduce(1029, 1030, 1)
    path = j2k_lossless(tmp_path, 1029, 1030)
    opts = DecodeOptions(working_size=256)
    assert decode(read_dataset(path), opts).shape == (1, 1029, 1030)
    assert np.array_equal(prepare_file(path, opts=opts),
                          prepare_file(path, opts=DecodeOptions(working_size=256, reduced_decode=False)))


def test_a_lossy_j2k_codestream_is_decoded_in_full(tmp_path: Path) -> None:
    """A 9/7 codestream's resolution level is not the low-pass of its decoded pixels."""
    ds = make_instance(StudySpec(views=1, rows=1100, columns=1300, bits_stored=12, seed=6), 0)
    ds.compress(uid.JPEG2000, encoding_plugin="pylibjpeg", j2k_cr=[10])
    ds.save_as(tmp_path / "lossy.dcm", enforce_file_format=True)
    assert decode(read_dataset(tmp_path / "lossy.dcm"), DecodeOptions()).shape == (1, 1100, 1300)


def test_a_reversible_codestream_marked_lossy_is_decoded_in_full(tmp_path: Path) -> None:
    """In JPEG 2000 (lossy allowed) a 5/3 codestream of a view marked Lossy Image Compression 01
    may have been cut short: its resolution level then is not the low-pass of its pixels."""
    path = j2k_lossless(tmp_path, 1100, 1300)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = uid.JPEG2000
    ds.LossyImageCompression = "01"
    ds.save_as(tmp_path / "marked.dcm", enforce_file_format=True)
    assert decode(read_dataset(tmp_path / "marked.dcm"), DecodeOptions()).shape == (1, 1100, 1300)
    del ds.LossyImageCompression
    ds.save_as(tmp_path / "unmarked.dcm", enforce_file_format=True)
    assert decode(read_dataset(tmp_path / "unmarked.dcm"), DecodeOptions()).shape == (1, 550, 650)
