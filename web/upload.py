"""Ad-hoc scoring of uploaded files: DICOM, PNG or JPEG, through the daemon's own path.

DICOM goes through :func:`dicom_io.prepare.prepare_view` (selection rules, decoding, display,
crop, resize, normalisation: exactly what a received view gets) and a PNG or JPEG, already a
displayed image, through :func:`dicom_io.pixels.to_model_input_with_crop` as ``radtriage
train`` and ``evaluate`` read them (8-bit grey by OpenCV, full size). Views are scored by
:func:`daemon.worker.score_views` with the served model; the study probability and priority
come from :mod:`inference.policy` with the configured rules, as ``radtriage score`` does.

Nothing is kept: the files live in a temporary folder for the length of the request, and the
pictures go back inside the page. Only when the user asks (``keep``) are the files, the result
and the pictures written under ``storage.path/uploads/``. Nothing about the files (names,
headers) is logged.

Nothing is decoded before its size is known to be within ``limits.max_pixels``: a PNG's size is
read from its IHDR chunk and a JPEG's from its frame header (:func:`image_size`); a DICOM
file's header is read by :func:`dicom_io.prepare.read_view` (its structure checked first; a deflated data set inflated as a
stream, only as far as the header, under ``limits.max_instance_mb``) and its size checked by
:func:`dicom_io.pixels.check_header` before any pixel is read, as for a received view. A
389 KB PNG of 20000 x 20000 pixels raised the process's peak memory by 770 MB when OpenCV
decoded it, a 250 KB deflated DICOM of 16000 x 16000 zeros by 500 MB when pydicom inflated it;
now each is refused, naming the limit, for under 2 MB.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import re
import secrets
import struct
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dicom_io.pixels import DecodeOptions, Preprocessing
from dicom_io.prepare import PreparedView, prepare_view, read_view, thumbnail
from web.queries import flag

log = logging.getLogger(__name__)

UPLOADS_DIR = "uploads"
_PNG, _JPEG = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"


class UploadError(ValueError):
    """The upload cannot be scored at all; the message says why."""


@dataclass(frozen=True)
class UploadedFile:
    name: str
    data: bytes


def kind_of(data: bytes) -> str | None:
    """``dicom``, ``png``, ``jpeg`` or None, from the bytes (not the file name)."""
    if data[:8] == _PNG:
        return "png"
    if data[:3] == _JPEG:
        return "jpeg"
    if data[128:132] == b"DICM":
        return "dicom"
    return None


#: the SOFn markers of ISO/IEC 10918-1 (all but DHT C4, JPG C8 and DAC CC), and SOF55 (JPEG-LS)
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
#: markers without a length: TEM, RST0-7, SOI
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


def image_size(data: bytes) -> tuple[int, int]:
    """(rows, columns) a PNG's IHDR or a JPEG's frame header declares, read without decoding;
    UploadError when the header cannot be read."""
    if data[:8] == _PNG:
        if len(data) < 24 or data[8:16] != b"\x00\x00\x00\rIHDR":  # libpng wants IHDR first
            raise UploadError("its size cannot be read: the PNG does not start with its IHDR chunk")
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    raise UploadError("its size cannot be read: not a PNG or JPEG file")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """The first frame header's size, walking the markers as libjpeg does (bytes before a
    marker's FF skipped, FF fill bytes skipped, segments skipped by their length), so that the
    size checked is the size the decoder will allocate."""
    at = 2
    while True:
        ff = data.find(b"\xff", at)
        if ff < 0:
            break
        at = ff + 1
        while at < len(data) and data[at] == 0xFF:
            at += 1
        if at >= len(data):
            break
        marker = data[at]
        at += 1
        if marker == 0x00 or marker in _STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # EOI or SOS before any frame header
            break
        if at + 2 > len(data):
            break
        length = struct.unpack(">H", data[at:at + 2])[0]
        if marker in _SOF:
            if length < 8 or at + 7 > len(data):
                break
            height, width = struct.unpack(">HH", data[at + 3:at + 7])
            if height == 0:  # defined later by a DNL marker, which libjpeg does not support
                raise UploadError("its size cannot be read: the JPEG frame header has no height")
            return height, width
        at += length
    raise UploadError("its size cannot be read: no JPEG frame header (SOF) before the scan")


def prepare_image_view(path: Path | str, prep: Preprocessing, opts: DecodeOptions) -> PreparedView:
    """A PNG or JPEG as the model's input with its geometry and thumbnail; never raises. Its
    size is checked against ``limits.max_pixels`` before it is decoded."""
    import cv2

    from dicom_io.geometry import ViewGeometry
    from dicom_io.pixels import to_model_input_with_crop

    try:
        data = Path(path).read_bytes()
        rows, cols = image_size(data)
    except OSError as exc:
        return PreparedView(None, None, f"cannot read the image: {exc.strerror or exc}")
    except UploadError as exc:
        return PreparedView(None, None, f"cannot decode the image: {exc}")
    if rows * cols > opts.max_pixels:
        return PreparedView(None, None, f"{rows} x {cols} pixels exceeds limits.max_pixels "
                                        f"({opts.max_pixels})")
    try:
        grey = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    except cv2.error as exc:
        return PreparedView(None, None, f"cannot decode the image: {exc}")
    if grey is None or grey.size == 0:
        return PreparedView(None, None, "cannot decode the image: not a PNG or JPEG OpenCV can read")
    if grey.size > opts.max_pixels:  # the header said otherwise: never trust one number alone
        return PreparedView(None, None, f"{grey.shape[0]} x {grey.shape[1]} pixels exceeds "
                                        f"limits.max_pixels ({opts.max_pixels})")
    try:
        x, crop = to_model_input_with_crop(grey, prep)
        geometry = ViewGeometry(rows=grey.shape[0], columns=grey.shape[1],
                                display_height=grey.shape[0], display_width=grey.shape[1],
                                crop=crop, size=prep.size, resize=prep.resize)
    except (cv2.error, ValueError, MemoryError) as exc:
        return PreparedView(None, None, f"cannot prepare the pixels: {type(exc).__name__}: {exc}")
    return PreparedView(x[None], None, None, (geometry,), thumbnail(grey))


def prepare_upload(path: Path | str, prep: Preprocessing, opts: DecodeOptions, rules) -> PreparedView:  # type: ignore[no-untyped-def]
    """:class:`~dicom_io.prepare.PreparePool`'s task for uploads: images by their suffix, the
    rest as DICOM through the daemon's :func:`~dicom_io.prepare.prepare_view`."""
    if Path(path).suffix in (".png", ".jpg"):
        return prepare_image_view(path, prep, opts)
    return prepare_view(path, prep, opts, rules)


def upload_pool(config, prep: Preprocessing):  # type: ignore[no-untyped-def]
    """The preparation pool uploads use: the daemon's, with :func:`prepare_upload` as its task
    (in the request's thread when ``decoding.workers`` is 1, else two processes)."""
    from daemon.worker import build_pool

    pool = build_pool(config, prep)
    pool.workers = 1 if config.decoding.workers == 1 else min(2, pool.workers)
    pool.task = prepare_upload
    return pool


def _safe_name(name: str, index: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name or "").name)[:80].strip("._")
    return f"{index:03d}-{stem or 'file'}"


def score_upload(files: Sequence[UploadedFile], *, config, scorer, pool,  # type: ignore[no-untyped-def]
                 keep: bool = False, now: dt.datetime | None = None) -> dict[str, Any]:
    """Score the uploaded files; one entry per study (DICOM grouped by Study Instance UID, the
    PNG and JPEG files together as one study), each view with its overlay picture (PNG, base64).
    ``keep``: also write everything under ``storage.path/uploads/``."""
    from pydicom.errors import InvalidDicomError

    from daemon.worker import score_views
    from dicom_io.errors import DicomIOError, describe
    from dicom_io.bodypart import study_type_of_study
    from inference.policy import is_abnormal, priority_for, study_probability
    from web.render import overlay, png, report_for

    if not files:
        raise UploadError("no file was uploaded")
    card = scorer.card
    model = f"{card.display_name} {card.version}"
    groups: "OrderedDict[str, list[tuple[int, str, Path, str]]]" = OrderedDict()
    refused: list[dict[str, Any]] = []
    max_inflated = int(config.limits.max_instance_mb * 1024 * 1024)
    with tempfile.TemporaryDirectory(prefix="radtriage-upload-") as tmp:
        for i, f in enumerate(files):
            kind = kind_of(f.data)
            if kind is None:
                refused.append({"name": f.name, "error": "not a DICOM (Part 10), PNG or JPEG file"})
                continue
            path = Path(tmp) / f"{i}.{'dcm' if kind == 'dicom' else 'png' if kind == 'png' else 'jpg'}"
            path.write_bytes(f.data)
            if kind == "dicom":
                try:  # the header only, once the structure is whole (a file cut short says
                    # where); a deflated one inflated as a stream, as far as the header
                    ds = read_view(path, pool.opts, stop_before_pixels=True,
                                   max_inflated=max_inflated)
                    key, uid = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
                except DicomIOError as exc:  # radtriage's own reason: what is wrong, and where
                    refused.append({"name": f.name, "error": str(exc)})
                    continue
                except (OSError, InvalidDicomError, AttributeError, ValueError, TypeError, KeyError,
                        EOFError, struct.error, OverflowError) as exc:
                    refused.append({"name": f.name,
                                    "error": f"not a readable DICOM file: {describe(exc)}"})
                    continue
            else:
                key, uid = "", f"upload-{i}"
            groups.setdefault(key, []).append((i, uid, path, f.name))
        rules = [(r.min_probability, r.priority) for r in config.priority.rules]
        threshold = config.model.operating_threshold(card)
        studies = []
        for key, views in groups.items():
            outcomes = score_views(scorer, pool, [(i, uid, p) for i, uid, p, _ in views],
                                   heatmap=config.model.heatmap,
                                   timeout_s=config.limits.study_timeout_s)
            probability = study_probability(o.probability for o in outcomes)
            result = {
                "study_instance_uid": key or None,
                "source": "DICOM" if key else "PNG/JPEG",
                "probability": probability,
                "abnormal": None if probability is None else is_abnormal(probability, threshold),
                "priority": priority_for(probability, rules, config.priority.default),
                "threshold": threshold, "model": model, "notice": card.notice,
                "study_type": study_type_of_study(o.study_type for o in outcomes),
                "reason": None if probability is not None else "; ".join(
                    sorted({o.error for o in outcomes if o.error})) or "no views",
            }
            result["flag"] = flag(result["priority"], probability is not None)
            report = report_for(result, notice=card.notice)
            result["views"] = []
            for n, (o, (_, _, _, name)) in enumerate(zip(outcomes, views), start=1):
                picture = None
                if o.thumbnail is not None:
                    label = "  ".join(p for p in (f"view {n}", o.study_type or "") if p)
                    picture = base64.b64encode(png(overlay(
                        report, sop_instance_uid=o.sop_instance_uid, probability=o.probability,
                        error=o.error, heatmap=o.heatmap, geometry=o.geometry,
                        thumbnail=o.thumbnail, box=o.box, label=label))).decode("ascii")
                result["views"].append({
                    "name": name, "sop_instance_uid": o.sop_instance_uid if key else None,
                    "probability": o.probability, "error": o.error, "study_type": o.study_type,
                    "peak_box": list(o.box) if o.box is not None else None,
                    "overlay_png": picture})
            studies.append(result)
        out: dict[str, Any] = {"studies": studies, "refused": refused, "kept": None}
        if keep:
            out["kept"] = _keep(config.storage.path, files, out, now or dt.datetime.now(dt.timezone.utc))
    n_views = sum(len(s["views"]) for s in studies)
    log.info("upload scored: %d study(ies), %d view(s), %d file(s) refused%s", len(studies),
             n_views, len(refused), "; kept on request" if keep else "; nothing kept")
    return out


def _keep(root: Path, files: Sequence[UploadedFile], out: dict[str, Any], now: dt.datetime) -> str:
    """Write the files, the result (JSON) and the pictures under ``root/uploads/``; return the
    folder, relative to ``root``."""
    rel = f"{UPLOADS_DIR}/{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"
    folder = root / rel
    folder.mkdir(parents=True, mode=0o700)
    for i, f in enumerate(files):
        (folder / _safe_name(f.name, i)).write_bytes(f.data)
    pictures = 0
    plain = json.loads(json.dumps(out))
    for s in plain["studies"]:
        for v in s["views"]:
            if v["overlay_png"]:
                pictures += 1
                (folder / f"overlay-{pictures:03d}.png").write_bytes(base64.b64decode(v["overlay_png"]))
                v["overlay_png"] = f"overlay-{pictures:03d}.png"
    plain["kept"] = rel
    (folder / "result.json").write_text(json.dumps(plain, indent=2), encoding="utf-8")
    return rel
