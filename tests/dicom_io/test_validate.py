"""dicom_io.validate.check_instance: the malformed corpus is refused, saying what and where;
no valid file of any transfer syntax the daemon accepts is refused; a 2k x 2k image costs little.

The corpus (tests/dicom_io/malformed.py) is checked in the receiver's order: check_instance,
then read_header. Valid files: the transfer syntax corpus (tests/dicom_io/corpus.py, DCMTK-made
entries marked ``integration`` as in test_transfer_syntaxes.py), pydicom's sample files, and
hand-made multi-frame, bit-packed, YBR_FULL_422 and JP2 files.
"""
from __future__ import annotations

import copy
import struct
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames

from daemon.receiver import read_header, status_for
from dicom_io.codecs import CANDIDATES
from dicom_io.errors import InvalidInstance, UnsupportedInstance
from dicom_io.synthetic import StudySpec, make_instance
from dicom_io.validate import MAX_DEPTH, SYNTAXES, check_instance
from tests.dicom_io import malformed
from tests.dicom_io.corpus import build_corpus, corpus_entries, missing_encoder, source_instance

CORPUS = malformed.build()


def refuse(path: Path, entry: malformed.Malformed) -> Exception:
    """What the receiver does with the file: check_instance, then read_header."""
    with pytest.raises((InvalidInstance, UnsupportedInstance)) as info:
        check_instance(path)
        read_header(path, sop_uid=entry.sop_instance_uid, sop_class_uid=entry.sop_class_uid)
    return info.value


#: pydicom warns about (and logs) invalid values read_header meets, e.g. a UID with junk, then
#: goes on; pytest's ``filterwarnings = error`` would turn that into an exception the daemon
#: never sees, so these tests take pydicom's warnings as the daemon does: they are not errors.
PYDICOM_WARNINGS_AS_IN_THE_DAEMON = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")


@PYDICOM_WARNINGS_AS_IN_THE_DAEMON
@pytest.mark.parametrize("entry", CORPUS, ids=lambda m: m.name)
def test_malformed_instance_is_refused_with_its_reason(entry, tmp_path):
    path = entry.write(tmp_path / f"{entry.name}.dcm")
    exc = refuse(path, entry)
    reason = str(exc)
    for word in entry.words():
        assert word in reason, f"{word!r} not in {reason!r}"
    assert status_for(exc) == entry.status
    assert "PHANTOM" not in reason  # the patient's name and ID: never in a reason
    if entry.caught_by == malformed.CHECK:
        with pytest.raises((InvalidInstance, UnsupportedInstance)):
            check_instance(path)
    else:  # well formed: what is wrong is what read_header checks (UIDs, the request)
        check_instance(path)


def test_corpus_sources_are_valid(tmp_path):
    """Each kind of source the corpus breaks passes as it is: the entries fail for their edits."""
    for ts in malformed.TRANSFER_SYNTAXES[:5]:
        s = malformed.source(ts)
        entry = s.entry("valid", s.dataset, malformed.CHECK)
        path = entry.write(tmp_path / "valid.dcm")
        check_instance(path)
        header = read_header(path, sop_uid=entry.sop_instance_uid, sop_class_uid=entry.sop_class_uid)
        assert header.sop_uid == s.sop_uid


# -- valid files: every transfer syntax --------------------------------------------------

SOURCES = {
    "12bit": StudySpec(views=1, rows=300, columns=260, bits_stored=12, modality="CR",
                       photometric="MONOCHROME1", seed=21),
    "8bit": StudySpec(views=1, rows=120, columns=160, bits_stored=8, modality="DX", seed=22),
}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("valid")
    return {name: build_corpus(root / name, source_instance(spec)) for name, spec in SOURCES.items()}


@pytest.mark.parametrize("source,enc", corpus_entries(SOURCES))
def test_valid_file_of_every_transfer_syntax_passes(corpora, source, enc):
    path = corpora[source].get(enc.uid)
    if path is None:
        pytest.skip(missing_encoder(enc) or f"{enc.name} was not built")
    check_instance(path)


def test_every_accepted_transfer_syntax_has_a_rule():
    assert set(CANDIDATES) <= set(SYNTAXES)


#: pydicom's bundled files that are valid (and local to the wheel): other modalities, colour,
#: multi-frame, odd sizes, big endian, deflate with a gzip trailer, JPEG with APP markers
PYDICOM_VALID = (
    "JPEGLSNearLossless_16.dcm", "JPGExtended.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm", "image_dfl.dcm", "SC_rgb_rle.dcm", "SC_ybr_full_422_uncompressed.dcm",
    "SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm", "693_J2KI.dcm", "SC_rgb_rle_2frame.dcm",
    "MR_small_padded.dcm", "liver_1frame.dcm", "SC_jpeg_no_color_transform.dcm", "JPEG-lossy.dcm",
    "SC_rgb_small_odd.dcm", "CT_small.dcm", "MR_small.dcm", "GDCMJ2K_TextGBR.dcm",
)


@pytest.mark.parametrize("name", PYDICOM_VALID)
def test_pydicom_sample_passes(name):
    check_instance(Path(get_testdata_file(name)))


def _save(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def test_multiframe_with_an_offset_table_passes_and_a_wrong_offset_is_refused(tmp_path):
    ds = make_instance(StudySpec(views=1, rows=64, columns=48), 0)
    ds.compress(uid.JPEG2000Lossless, encoding_plugin="pylibjpeg")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.NumberOfFrames = 3
    ds.PixelData = encapsulate([frame] * 3, has_bot=True)
    check_instance(_save(ds, tmp_path / "bot.dcm"))

    # offsets: 0, then 1 byte into the first fragment (no item there)
    bot = struct.pack("<3L", 0, 1, 2 * (len(frame) + 8))
    ds.PixelData = b"\xfe\xff\x00\xe0" + struct.pack("<L", 12) + bot + ds.PixelData[8 + 12:]
    with pytest.raises(InvalidInstance, match=r"Basic Offset Table entry 2 \(1\) .* does not point"):
        check_instance(_save(ds, tmp_path / "bad-bot.dcm"))


def test_multiframe_garbage_in_a_later_frame_is_refused(tmp_path):
    """One fragment per frame, no offset table: the first bytes of every frame are checked."""
    ds = make_instance(StudySpec(views=1, rows=64, columns=48), 0)
    ds.compress(uid.JPEG2000Lossless, encoding_plugin="pylibjpeg")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.NumberOfFrames = 2
    ds.PixelData = encapsulate([frame, b"\0" * len(frame)])
    with pytest.raises(InvalidInstance, match=r"frame 2 \(fragment 2 at offset \d+\) starts neither"):
        check_instance(_save(ds, tmp_path / "frame2.dcm"))


def test_jp2_signature_box_passes(tmp_path):
    ds = make_instance(StudySpec(views=1, rows=64, columns=48), 0)
    ds.compress(uid.JPEG2000Lossless, encoding_plugin="pylibjpeg")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    jp2 = b"\x00\x00\x00\x0cjP  \r\n\x87\n" + frame  # a JP2 signature box, then whatever follows
    ds.PixelData = encapsulate([jp2 + b"\0" * (len(jp2) % 2)])
    check_instance(_save(ds, tmp_path / "jp2.dcm"))


def test_bit_packed_and_ybr_full_422_lengths(tmp_path):
    ds = make_instance(StudySpec(views=1, rows=10, columns=10), 0)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.PixelData = b"\0" * 14  # 100 bits: 13 bytes, padded to 14
    ds["PixelData"].VR = "OB"
    check_instance(_save(ds, tmp_path / "bits1.dcm"))
    ds.PixelData = b"\0" * 12
    with pytest.raises(InvalidInstance, match="holds 12 bytes.*1 bit.*need 13"):
        check_instance(_save(ds, tmp_path / "bits1-short.dcm"))

    ds = make_instance(StudySpec(views=1, rows=10, columns=10), 0)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = b"\0" * 200  # 2 bytes per pixel, not 3
    ds["PixelData"].VR = "OB"
    check_instance(_save(ds, tmp_path / "ybr422.dcm"))


def test_float_pixel_data_is_pixel_data(tmp_path):
    ds = make_instance(StudySpec(views=1, rows=4, columns=4), 0)
    del ds.PixelData
    ds.FloatPixelData = np.zeros(16, dtype="<f4").tobytes()
    check_instance(_save(ds, tmp_path / "float.dcm"))


def test_pixel_data_is_required_only_of_an_image(tmp_path):
    ds = make_instance(StudySpec(views=1, rows=4, columns=4), 0)
    del ds.PixelData
    path = _save(ds, tmp_path / "no-pixels.dcm")
    check_instance(path, require_pixels=False)
    with pytest.raises(InvalidInstance, match="no Pixel Data"):
        check_instance(path)


def test_nesting_up_to_the_limit_passes(tmp_path):
    ds = make_instance(StudySpec(views=1, rows=4, columns=4), 0)
    item = ds.AnatomicRegionSequence[0]
    for _ in range(MAX_DEPTH - 1):
        inner = copy.deepcopy(item)
        item = pydicom.Dataset()
        item.AnatomicRegionModifierSequence = [inner]
    ds.AnatomicRegionSequence = [item]
    check_instance(_save(ds, tmp_path / "deep.dcm"))


# -- the file and its File Meta group ----------------------------------------------------


def _valid(tmp_path: Path) -> tuple[bytes, Path]:
    path = _save(make_instance(StudySpec(views=1, rows=8, columns=8), 0), tmp_path / "ok.dcm")
    return path.read_bytes(), path


def test_file_level_damage_is_refused(tmp_path):
    raw, path = _valid(tmp_path)
    (meta_length,) = struct.unpack("<L", raw[140:144])
    cases = {
        "no-preamble": (raw[132:], "no 'DICM' prefix at offset 128"),
        "too-short": (raw[:100], "truncated: the preamble"),
        "meta-cut": (raw[:150], "File Meta group length (0002,0000) says the group ends"),
        "meta-length-short": (raw[:140] + struct.pack("<L", meta_length - 10) + raw[144:],
                              "group length"),
    }
    for name, (data, words) in cases.items():
        path.write_bytes(data)
        with pytest.raises(InvalidInstance) as info:
            check_instance(path)
        assert words in str(info.value), (name, str(info.value))


def test_unknown_transfer_syntax_is_unsupported(tmp_path):
    ds = make_instance(StudySpec(views=1, rows=8, columns=8), 0)
    path = _save(ds, tmp_path / "ok.dcm")
    raw = path.read_bytes()
    ts = str(uid.ExplicitVRLittleEndian).encode() + b"\0"
    assert raw.count(ts) == 1
    path.write_bytes(raw.replace(ts, b"1.2.840.10008.1.2.9\0"))  # same length, no such syntax
    with pytest.raises(UnsupportedInstance, match="not one radtriage accepts"):
        check_instance(path)


# -- cost ------------------------------------------------------------------------------


def test_a_2k_by_2k_image_costs_a_few_milliseconds(tmp_path):
    ds = make_instance(StudySpec(views=1, rows=2048, columns=2048, bits_stored=12), 0)
    path = _save(ds, tmp_path / "2k.dcm")
    check_instance(path)
    runs = []
    for _ in range(20):
        start = time.perf_counter()
        check_instance(path)
        runs.append(time.perf_counter() - start)
    assert min(runs) < 0.005, f"check_instance took {min(runs) * 1e3:.2f} ms at best"
