"""dicom_io.deflate: deflated data sets inflate as a stream, under a limit, never whole; the
checks and reads built on it (validate.check_instance, pixels.read_dataset, the receiver's
read_header) stop a deflate bomb from its header (issue 17, finding 3).

Memory is measured with tracemalloc (every bytes object zlib and pydicom make is a Python
allocation): a 16000 x 16000 bomb inflates to 256 MB, so a peak of a few MB proves that no
step holds the inflated data set.
"""

from __future__ import annotations

import io
import tracemalloc
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
import pytest
from pydicom import uid

from daemon.receiver import read_header
from dicom_io.bodypart import SelectionRules
from dicom_io.deflate import CHUNK, InflatedStream, read_file
from dicom_io.errors import InstanceTooLarge, InvalidInstance
from dicom_io.pixels import DecodeOptions, Preprocessing, decode, read_dataset
from dicom_io.prepare import prepare_view
from dicom_io.synthetic import StudySpec, make_instance
from dicom_io.validate import check_instance
from tests.dicom_io import bombs

MB = 1 << 20
#: tracemalloc peak allowed for any step over a 256 MB bomb: a few chunks of 1 MiB
PEAK_LIMIT = 8 * MB


@pytest.fixture(scope="module")
def bomb_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ds, raw = bombs.bomb(16000, 16000)
    path = tmp_path_factory.mktemp("bomb") / "bomb.dcm"
    path.write_bytes(raw)
    return path


def _start(path: Path) -> int:
    """Where the deflate stream starts (after the File Meta group)."""
    return len(path.read_bytes()) - len(bombs_data_set(path))


def bombs_data_set(path: Path) -> bytes:
    from tests.dicom_io.malformed import dataset_of

    return dataset_of(path.read_bytes())


def peak_of(step: Callable[[], object]) -> tuple[object, int]:
    """(what ``step`` returned or raised, the tracemalloc peak while it ran)."""
    tracemalloc.start()
    try:
        try:
            result: object = step()
        except Exception as exc:  # the test asserts which
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_stream_stops_at_the_limit_without_allocating_it(bomb_file):
    limit = 64 * MB
    with InflatedStream(bomb_file, _start(bomb_file), limit=limit) as stream:
        result, peak = peak_of(stream.size)
    assert isinstance(result, InstanceTooLarge), result
    assert str(limit) in str(result)
    assert peak < PEAK_LIMIT, f"peak {peak / MB:.1f} MB inflating to a {limit / MB:.0f} MB limit"


def test_the_stream_reads_seeks_and_peeks_back_as_a_file(tmp_path):
    data = bytes(range(256)) * 20000 + b"end"  # 5 MB: several chunks
    raw = tmp_path / "raw.bin"
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    raw.write_bytes(b"HEAD" + c.compress(data) + c.flush())
    with InflatedStream(raw, 4) as s:
        assert s.read(10) == data[:10]
        s.seek(CHUNK + 5)
        assert s.read(7) == data[CHUNK + 5:CHUNK + 12]
        s.seek(-20, io.SEEK_CUR)  # a peek back within the window
        assert s.read(20) == data[CHUNK - 8:CHUNK + 12]
        s.seek(3)  # far back: inflated again from the start
        assert s.read(2 * CHUNK) == data[3:3 + 2 * CHUNK]
        assert s.size() == len(data)
        s.seek(-3, io.SEEK_END)
        assert s.read() == b"end" and s.read(5) == b""
        s.seek(0)
        assert s.read() == data


@pytest.mark.parametrize(("damage", "words"), [
    (lambda d: d[:len(d) // 2], "truncated"),
    (lambda d: d[:100] + bytes(b ^ 0x5A for b in d[100:]), "does not inflate"),
    (lambda d: d + b"\0" * 16, "follow the end"),
])
def test_a_broken_deflate_stream_is_an_invalid_instance(tmp_path, damage, words):
    ds = make_instance(StudySpec(views=1, rows=64, columns=64), 0)
    ds.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path = tmp_path / "d.dcm"
    path.write_bytes(buf.getvalue())
    data_set = bombs_data_set(path)
    path.write_bytes(buf.getvalue()[:-len(data_set)] + damage(data_set))
    with pytest.raises(InvalidInstance, match=words):
        with InflatedStream(path, _start(path)) as s:
            s.size()


def test_check_instance_refuses_a_bomb_over_max_pixels_from_its_header(bomb_file):
    result, peak = peak_of(lambda: check_instance(bomb_file, max_inflated=1024 * MB,
                                                  max_pixels=50_000_000))
    assert isinstance(result, InstanceTooLarge), result
    assert "limits.max_pixels (50000000)" in str(result) and "16000" in str(result)
    assert peak < PEAK_LIMIT, f"peak {peak / MB:.1f} MB"


def test_check_instance_walks_a_bomb_within_its_limits_in_bounded_memory(bomb_file):
    result, peak = peak_of(lambda: check_instance(bomb_file, max_inflated=1024 * MB))
    assert result is None, result  # structurally a valid image
    assert peak < PEAK_LIMIT, f"peak {peak / MB:.1f} MB"
    result, _ = peak_of(lambda: check_instance(bomb_file, max_inflated=200 * MB))
    assert isinstance(result, InstanceTooLarge), result


def test_the_receivers_header_read_stops_before_the_pixels(bomb_file):
    meta = pydicom.filereader.read_file_meta_info(bomb_file)
    sop_uid, sop_class = str(meta.MediaStorageSOPInstanceUID), str(meta.MediaStorageSOPClassUID)
    header, peak = peak_of(lambda: read_header(bomb_file, sop_uid=sop_uid, sop_class_uid=sop_class,
                                               limit=1024 * MB))
    assert not isinstance(header, Exception), header
    assert header.sop_uid == sop_uid
    assert peak < PEAK_LIMIT, f"peak {peak / MB:.1f} MB"


def test_the_worker_refuses_a_bomb_over_max_pixels_before_inflating_its_pixels(bomb_file):
    opts = DecodeOptions(max_pixels=50_000_000)
    view, peak = peak_of(lambda: prepare_view(bomb_file, Preprocessing(), opts, SelectionRules()))
    assert view.tensor is None and "limits.max_pixels" in view.error, view.error
    assert peak < PEAK_LIMIT, f"peak {peak / MB:.1f} MB"
    ds, peak = peak_of(lambda: read_dataset(bomb_file))
    assert ds.Rows == 16000 and peak < PEAK_LIMIT
    element = ds.get_item("PixelData", keep_deferred=True)
    assert element.value is None and element.length == 16000 * 16000  # deferred, not inflated


def test_a_deflated_file_reads_and_decodes_as_its_explicit_twin(tmp_path):
    ds = make_instance(StudySpec(views=1, rows=200, columns=150, seed=3), 0)
    ds.SeriesDescription = "x" * 64
    paths = {}
    for name, ts in (("explicit", uid.ExplicitVRLittleEndian),
                     ("deflated", uid.DeflatedExplicitVRLittleEndian)):
        ds.file_meta.TransferSyntaxUID = ts
        paths[name] = tmp_path / f"{name}.dcm"
        ds.save_as(paths[name], enforce_file_format=True)
    ours, theirs = read_file(paths["deflated"]), pydicom.dcmread(paths["deflated"])
    assert [e.tag for e in ours] == [e.tag for e in theirs]
    for elem in theirs:
        assert ours[elem.tag].value == elem.value, elem.keyword
    assert read_file(paths["deflated"], stop_before_pixels=True).get("PixelData") is None
    twin = read_dataset(paths["explicit"])
    assert np.array_equal(decode(read_dataset(paths["deflated"])), decode(twin))
    prep, opts, rules = Preprocessing(), DecodeOptions(), SelectionRules()
    a = prepare_view(paths["deflated"], prep, opts, rules)
    b = prepare_view(paths["explicit"], prep, opts, rules)
    assert a.error is None and np.array_equal(a.tensor, b.tensor)


def test_pydicoms_deflated_sample_with_a_gzip_trailer_reads(tmp_path):
    from pydicom.data import get_testdata_file

    path = Path(get_testdata_file("image_dfl.dcm"))
    ours, theirs = read_file(path), pydicom.dcmread(path)
    assert np.array_equal(ours.pixel_array, theirs.pixel_array)
    check_instance(path)
