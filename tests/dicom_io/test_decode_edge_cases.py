"""Edge cases of decoding found in review: codestreams that lie about their size, reduced decoding
where it cannot be exact, and LUT descriptors read as US or SS."""
from __future__ import annotations

import io
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence

from dicom_io.bodypart import SelectionRules
from dicom_io.errors import InvalidInstance
from dicom_io.pixels import DecodeOptions, Preprocessing, decode, lut_lookup, to_display
from dicom_io.prepare import prepare_view

FULL = DecodeOptions(reduced_decode=False)


def make(arr: np.ndarray, *, bits_stored: int | None = None, signed: bool = False,
         ts: str = uid.ExplicitVRLittleEndian, **extra: object) -> Dataset:
    arr = np.asarray(arr)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid.generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
    ds.Modality, ds.BodyPartExamined = "CR", "WRIST"
    ds.Rows, ds.Columns = arr.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = arr.tobytes()
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


def saved(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def smooth(h: int, w: int, top: int, seed: int = 1) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    img = top / 2 + top / 4 * np.sin(x / 150.0) * np.cos(y / 110.0) + rng.normal(0, top / 200, (h, w))
    return img.clip(0, top - 1).astype(np.uint16)


# -- a codestream that declares more than the header ---------------------------------------------


def _jpeg_claiming(height: int, width: int) -> Dataset:
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(buf, format="JPEG", quality=90)
    cs = bytearray(buf.getvalue())
    sof = cs.index(b"\xff\xc0")  # SOF0: FFC0, Lf (2), P (1), Y (2), X (2)
    cs[sof + 5:sof + 7], cs[sof + 7:sof + 9] = height.to_bytes(2, "big"), width.to_bytes(2, "big")
    ds = make(np.zeros((64, 64), np.uint8), ts=uid.JPEGBaseline8Bit)
    ds.PixelData = encapsulate([bytes(cs) + b"\0" * (len(cs) % 2)])
    ds["PixelData"].VR = "OB"
    return ds


def _j2k_claiming(height: int, width: int) -> Dataset:
    ds = make(smooth(64, 64, 4096), bits_stored=12)
    ds.compress(uid.JPEG2000Lossless, encoding_plugin="pylibjpeg")
    cs = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    cs[8:12], cs[12:16] = width.to_bytes(4, "big"), height.to_bytes(4, "big")  # SIZ Xsiz, Ysiz
    ds.PixelData = encapsulate([bytes(cs)])
    return ds


@pytest.mark.parametrize("build", [_jpeg_claiming, _j2k_claiming], ids=["jpeg", "jpeg2000"])
def test_a_codestream_larger_than_the_header_is_refused_before_decoding(tmp_path: Path, build) -> None:  # type: ignore[no-untyped-def]
    """A 1 kB file must not make the decoder allocate a 40000 x 40000 image (limits.max_pixels)."""
    path = saved(build(40000, 40000), tmp_path / "bomb.dcm")
    started = time.perf_counter()
    view = prepare_view(path, Preprocessing(), DecodeOptions(), SelectionRules())
    assert time.perf_counter() - started < 5  # refused from the header, not after a decode
    assert view.tensor is None
    assert "contradict" in view.error and "40000 x 40000" in view.error


def test_a_codestream_of_the_header_size_decodes(tmp_path: Path) -> None:
    view = prepare_view(saved(_j2k_claiming(64, 64), tmp_path / "ok.dcm"), Preprocessing(),
                        DecodeOptions(), SelectionRules())
    assert view.error is None and view.tensor is not None


# -- reduced decoding only where it is sound -----------------------------------------------------


def test_reduced_j2k_is_not_used_with_padding(tmp_path: Path) -> None:
    """A resolution level blends padding into the anatomy; those pixels would escape the mask."""
    a = smooth(2048, 2048, 4096)
    y, x = np.mgrid[0:2048, 0:2048]
    a[(x - 1024) ** 2 + (y - 1024) ** 2 >= 900 ** 2] = 4095  # a circular shutter, padded
    ds = make(a, bits_stored=12, PixelPaddingValue=4095)
    ds.compress(uid.JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds = pydicom.dcmread(saved(ds, tmp_path / "pad.dcm"))
    assert decode(ds, DecodeOptions()).shape == (1, 2048, 2048)  # full decode, then area downscale
    assert np.array_equal(to_display(ds), to_display(ds, FULL))


def test_reduced_j2k_with_pixel_representation_against_the_codestream(tmp_path: Path) -> None:
    """An unsigned codestream in a signed image: pydicom reconciles it; the reduced path steps aside."""
    a = smooth(1100, 1100, 4096)
    ds = make(a, bits_stored=12)
    ds.compress(uid.JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds.PixelRepresentation = 1
    ds = pydicom.dcmread(saved(ds, tmp_path / "sign.dcm"))
    reduced, full = decode(ds, DecodeOptions()), decode(ds, FULL)
    assert np.array_equal(reduced, full)


@pytest.mark.parametrize("bits", [6, 7, 10])
def test_reduced_j2k_undoes_pillows_scaling_at_any_precision(tmp_path: Path, bits: int) -> None:
    a = smooth(1100, 1100, 1 << bits).astype(np.uint8 if bits <= 8 else np.uint16)
    ds = make(a, bits_stored=bits)
    ds.compress(uid.JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds = pydicom.dcmread(saved(ds, tmp_path / f"j2k{bits}.dcm"))
    reduced = decode(ds, DecodeOptions())[0]
    assert reduced.shape == (550, 550)
    assert 0 <= int(reduced.min()) and int(reduced.max()) < (1 << bits)
    full_mean = float(a.mean())
    assert abs(float(reduced.mean()) - full_mean) < 0.01 * (1 << bits)


def test_signed_jpeg_baseline_is_not_scaled(tmp_path: Path) -> None:
    """libjpeg's DCT scaling gives unsigned samples; a signed image is decoded in full by pydicom."""
    y, x = np.mgrid[0:1200, 0:1100]
    a = ((x + y) * 255 // 2298).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=95)
    ds = make(a, signed=True, ts=uid.JPEGBaseline8Bit)
    ds.PixelData = encapsulate([buf.getvalue() + b"\0" * (len(buf.getvalue()) % 2)])
    ds["PixelData"].VR = "OB"
    ds = pydicom.dcmread(saved(ds, tmp_path / "signed.dcm"))
    reduced = decode(ds, DecodeOptions())
    assert reduced.shape == (1, 1200, 1100) and reduced.dtype == np.int8
    assert np.array_equal(reduced, decode(ds, FULL))


# -- LUT descriptors: US or SS, and OW data in either byte order ---------------------------------


def _signed_with_modality_lut(ts: str, descriptor_vr: str) -> Dataset:
    a = (np.linspace(-20000, 19999, 64 * 64).reshape(64, 64)).astype(np.int16)
    ds = make(a, bits_stored=16, signed=True, ts=ts, WindowCenter=2000, WindowWidth=4000)
    item = Dataset()
    item.add_new(0x00283002, descriptor_vr, [40000, -20000 if descriptor_vr == "SS" else 45536, 16])
    item.add_new(0x00283006, "OW", (np.arange(40000) // 10).astype("<u2").tobytes())
    item.ModalityLUTType = "US"
    ds.ModalityLUTSequence = Sequence([item])
    return ds


@pytest.mark.parametrize(("ts", "vr"), [(uid.ImplicitVRLittleEndian, "US"),  # read back as SS
                                        (uid.ExplicitVRLittleEndian, "US"),
                                        (uid.ExplicitVRLittleEndian, "SS")])
def test_a_lut_descriptor_as_read_in_any_vr(tmp_path: Path, ts: str, vr: str) -> None:
    """40000 entries from -20000: a monotonic LUT over the whole signed input gives 0 .. 3999."""
    ds = pydicom.dcmread(saved(_signed_with_modality_lut(ts, vr), tmp_path / "lut.dcm"))
    stored = decode(ds, FULL)[0]
    out, bits = lut_lookup(stored, ds.ModalityLUTSequence[0], signed_input=True)
    assert bits == 16 and out.min() == 0 and out.max() == 3999
    assert np.all(np.diff(out.reshape(-1)) >= 0)


@pytest.mark.integration
def test_ow_lut_data_in_big_endian(tmp_path: Path) -> None:
    if shutil.which("dcmconv") is None:
        pytest.skip("DCMTK's dcmconv is not installed (Debian package dcmtk)")
    y, x = np.mgrid[0:64, 0:64]
    ds = make(((x + y) * 4095 // 126).astype(np.uint16), bits_stored=12)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.LUTData = np.arange(4096, dtype="<u2").tobytes()  # identity
    item["LUTData"].VR = "OW"
    ds.VOILUTSequence = Sequence([item])
    little = saved(ds, tmp_path / "le.dcm")
    subprocess.run(["dcmconv", "+tb", str(little), str(tmp_path / "be.dcm")], check=True,
                   capture_output=True)
    opts = DecodeOptions(working_size=0)
    assert np.array_equal(to_display(pydicom.dcmread(tmp_path / "be.dcm"), opts),
                          to_display(pydicom.dcmread(little), opts))


def test_a_corrupt_deflated_file_is_a_reason_not_a_crash(tmp_path: Path) -> None:
    ds = make(smooth(64, 64, 4096), bits_stored=12, ts=uid.DeflatedExplicitVRLittleEndian)
    raw = bytearray(saved(ds, tmp_path / "d.dcm").read_bytes())
    raw[400:] = bytes(b ^ 0x5A for b in raw[400:])  # the deflated stream turned to garbage
    (tmp_path / "bad.dcm").write_bytes(bytes(raw))
    view = prepare_view(tmp_path / "bad.dcm", Preprocessing(), FULL, SelectionRules())
    assert view.tensor is None and "not a readable DICOM file" in view.error
    with pytest.raises(InvalidInstance):
        from dicom_io.pixels import read_dataset
        read_dataset(tmp_path / "bad.dcm")
