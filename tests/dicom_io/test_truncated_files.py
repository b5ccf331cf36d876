"""A file cut short is reported as such, with where and how short (issue 18, item 6).

It said "modality (none) is not scored": pydicom's lenient read of a JPEG 2000 file cut in its
pixel data returned a data set without the header elements it had read, and view selection
refused that. ``dicom_io.prepare.read_view`` now checks the file's structure first
(``dicom_io.validate.check_instance``, the receiver's check), so every path that prepares a view
(the daemon, ``radtriage score``, uploads: ``tests/unit/test_score_truncated.py``,
``tests/web/test_upload_truncated.py``) gives the structural reason: which element, at which
offset, what it declares and what is left.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from dicom_io.bodypart import SelectionRules
from dicom_io.errors import InvalidInstance
from dicom_io.pixels import DecodeOptions, Preprocessing
from dicom_io.prepare import prepare_view, read_view
from tests.dicom_io.corpus import PYDICOM
from tests.dicom_io.truncated import ENCODINGS, available, write_truncated

PREP, OPTS, RULES = Preprocessing(), DecodeOptions(), SelectionRules()


def _params() -> list:  # type: ignore[type-arg]
    return [pytest.param(enc.name, id=enc.name,
                         marks=[] if enc.tool == PYDICOM else [pytest.mark.integration])
            for enc in ENCODINGS]


@pytest.fixture(scope="module")
def cut(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("truncated")
    return {where: write_truncated(root / where, where) for where in ("pixels", "header")}


def _file(cut: dict[str, dict[str, Path]], where: str, name: str) -> Path:
    path = cut[where].get(name)
    if path is None:
        enc = next(e for e in ENCODINGS if e.name == name)
        pytest.skip(f"no encoder for {enc.name} here ({enc.tool})")
    return path


def assert_truncation_reason(error: str | None, name: str) -> None:
    assert error is not None
    assert error.startswith("not a readable DICOM file: "), error
    assert "truncated" in error, error
    assert "modality" not in error.lower(), error
    if name != "DeflatedExplicitVRLittleEndian":  # the deflate stream ends: no element to name
        assert re.search(r"at offset \d+", error), error


@pytest.mark.parametrize("name", _params())
def test_a_file_cut_in_its_pixel_data_is_reported_truncated(cut, name: str) -> None:  # type: ignore[no-untyped-def]
    view = prepare_view(_file(cut, "pixels", name), PREP, OPTS, RULES)
    assert view.tensor is None
    assert_truncation_reason(view.error, name)
    if name != "DeflatedExplicitVRLittleEndian":  # what the element declares, what is left
        assert re.search(r"declares \d+ bytes but only \d+ are left in the file", view.error), view.error


@pytest.mark.parametrize("name", _params())
def test_a_file_cut_in_its_header_is_reported_truncated(cut, name: str) -> None:  # type: ignore[no-untyped-def]
    view = prepare_view(_file(cut, "header", name), PREP, OPTS, RULES)
    assert view.tensor is None and view.study_type is None
    assert_truncation_reason(view.error, name)


@pytest.mark.parametrize("name", _params())
def test_the_whole_files_still_prepare(cut, name: str) -> None:  # type: ignore[no-untyped-def]
    """The structural check refuses nothing the receiver accepts."""
    whole = _file(cut, "pixels", name).parent / "whole" / f"{name}.dcm"
    view = prepare_view(whole, PREP, OPTS, RULES)
    assert view.error is None, view.error
    assert view.tensor is not None and np.isfinite(view.tensor).all()


def test_read_view_reads_a_header_with_the_same_verdict(cut) -> None:  # type: ignore[no-untyped-def]
    """What grouping files into studies can call: the header only, refused the same way."""
    bad = _file(cut, "header", "ExplicitVRLittleEndian")
    with pytest.raises(InvalidInstance, match=r"^not a readable DICOM file: truncated: .* at offset \d+"):
        read_view(bad, OPTS, stop_before_pixels=True)
    whole = bad.parent.parent / "pixels" / "whole" / "ExplicitVRLittleEndian.dcm"
    ds = read_view(whole, OPTS, stop_before_pixels=True)
    assert "PixelData" not in ds and ds.Modality == "CR"


def test_every_encoding_is_cut(cut) -> None:  # type: ignore[no-untyped-def]
    """Guards the fixture: what is installed here was written, and pydicom itself is enough
    for the JPEG 2000 file of the issue."""
    for where in ("pixels", "header"):
        assert {e.name for e in ENCODINGS if available(e)} == set(cut[where])
        assert "JPEG2000Lossless" in cut[where]
