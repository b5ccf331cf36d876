"""Labelled radiographs on disk, as views grouped by study, prepared exactly as the daemon does.

Two layouts are read (``docs/evaluation.md`` describes them in full):

``mura``
    The MURA-v1.1 release: ``ROOT/MURA-v1.1/{split}_image_paths.csv`` (one image path a line,
    no header) and ``{split}_labeled_studies.csv`` (``study folder/,label``, no header). ROOT
    may be the folder holding ``MURA-v1.1/`` or ``MURA-v1.1`` itself. The study type is the
    ``XR_<TYPE>`` folder, the study the image's folder.
``dicom``
    ``ROOT/dicom/truth.csv`` (``study_instance_uid,label,study_type,split,boxes``) and DICOM
    files anywhere under ``ROOT/dicom/``, grouped by the Study Instance UID of their headers.
    ROOT may be the ``dicom`` folder itself.

A :class:`View` is only a path and its truth; :func:`load` turns one into the model's input
through the daemon's own code: :func:`dicom_io.prepare.prepare_view` for DICOM (read, select,
decode, display, crop, resize, normalise), :func:`dicom_io.pixels.to_model_input` for a PNG or
JPEG (already a displayed image: decoded as 8-bit grey by OpenCV). There is no second pipeline
to drift from the one that serves (no train/serve skew). A ``torch.utils.data.Dataset`` for
training needs nothing more::

    class ViewDataset(torch.utils.data.Dataset):
        def __init__(self, views, prep, opts): self.views, self.prep, self.opts = views, prep, opts
        def __len__(self): return len(self.views)
        def __getitem__(self, i):
            v = self.views[i]
            return torch.from_numpy(load(v, self.prep, self.opts)), float(v.label)

Nothing here imports torch, so :func:`prepare_path` can run in :class:`dicom_io.prepare.PreparePool`'s
worker processes.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Literal, NamedTuple, Sequence

import cv2
import numpy as np
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from dicom_io.bodypart import MURA_STUDY_TYPES, TEXT_FIELDS, SelectionRules, study_type_of
from dicom_io.pixels import DecodeOptions, Preprocessing, to_model_input
from dicom_io.prepare import PreparedView, prepare_view

log = logging.getLogger(__name__)

Layout = Literal["mura", "dicom"]
#: Files read as already displayed 8-bit images rather than DICOM.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
MURA_FOLDER = "MURA-v1.1"
DICOM_FOLDER = "dicom"
TRUTH_FILE = "truth.csv"
TRUTH_COLUMNS = ("study_instance_uid", "label", "study_type", "split", "boxes")
_XR_TYPE = re.compile(r"^XR_([A-Z]+)$", re.IGNORECASE)


class DatasetError(Exception):
    """The data folder cannot be read as a labelled dataset; the message says where and why."""


class Box(NamedTuple):
    """A true finding's box in the view's pixel coordinates (x: column, y: row; edges inclusive)."""

    x0: float
    y0: float
    x1: float
    y1: float
    finding: str = ""


@dataclass(frozen=True)
class View:
    """One radiograph and the truth of its study; everything a training or evaluation item needs."""

    path: Path
    #: the study it belongs to: MURA's study folder (``MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive``)
    #: or the Study Instance UID
    study_key: str
    #: the study's label: 1 abnormal, 0 normal
    label: int
    #: MURA study type (WRIST, ...), None when unknown
    study_type: str | None
    sop_instance_uid: str | None = None
    #: true boxes of this view (phantoms with findings), empty when none are known
    boxes: tuple[Box, ...] = ()

    @property
    def is_dicom(self) -> bool:
        """Read as DICOM unless the file name says PNG or JPEG."""
        return self.path.suffix.lower() not in IMAGE_SUFFIXES


# -- preparation: the daemon's path ------------------------------------------------------------


def prepare_image(path: Path | str, prep: Preprocessing,
                  opts: DecodeOptions = DecodeOptions()) -> PreparedView:
    """A PNG/JPEG view as model input (1, 3, S, S) via :func:`to_model_input`; never raises."""
    if not Path(path).is_file():  # checked first: OpenCV would print its own warning
        return PreparedView(None, None, "cannot read the image: no such file")
    try:
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    except cv2.error as exc:
        return PreparedView(None, None, f"cannot decode the image: {exc}")
    if grey is None:
        return PreparedView(None, None, "cannot read the image: not an image OpenCV can decode")
    if grey.size > opts.max_pixels:
        return PreparedView(None, None, f"{grey.shape[0]} x {grey.shape[1]} pixels exceeds "
                                        f"limits.max_pixels ({opts.max_pixels})")
    try:
        return PreparedView(to_model_input(grey, prep)[None], None, None)
    except (cv2.error, ValueError, MemoryError) as exc:
        return PreparedView(None, None, f"cannot prepare the pixels: {type(exc).__name__}: {exc}")


def prepare_path(path: Path | str, prep: Preprocessing, opts: DecodeOptions,
                 rules: SelectionRules) -> PreparedView:
    """One stored view, DICOM or image, as the daemon prepares it; never raises.

    DICOM goes through :func:`dicom_io.prepare.prepare_view` itself (so selection rules apply:
    a view the daemon would not score is not scored here either). A module-level function, so
    it can be :class:`~dicom_io.prepare.PreparePool`'s ``task``.
    """
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        return prepare_image(path, prep, opts)
    return prepare_view(path, prep, opts, rules)


def load(view: View, prep: Preprocessing, opts: DecodeOptions = DecodeOptions(),
         rules: SelectionRules = SelectionRules()) -> np.ndarray:
    """The model input of a single-frame view: float32 (3, S, S). Raises DatasetError saying
    why a view cannot be used (unreadable, not scored by the selection rules, multi-frame)."""
    prepared = prepare_path(view.path, prep, opts, rules)
    if prepared.tensor is None:
        raise DatasetError(f"{view.path}: {prepared.error}")
    if prepared.frames != 1:
        raise DatasetError(f"{view.path}: {prepared.frames} frames; load() gives one view")
    return prepared.tensor[0]


# -- study types -------------------------------------------------------------------------------


def parse_study_types(names: Iterable[str] | str | None) -> tuple[str, ...] | None:
    """``"WRIST,hand"`` or ``["XR_WRIST"]`` -> ``("WRIST", "HAND")``; None or empty -> None.

    Raises ValueError naming anything that is not a MURA study type.
    """
    if names is None:
        return None
    if isinstance(names, str):
        names = names.split(",")
    out: list[str] = []
    for name in names:
        t = name.strip().upper()
        if t.startswith("XR_"):
            t = t[3:]
        if not t:
            continue
        if t not in MURA_STUDY_TYPES:
            raise ValueError(f"unknown study type {name.strip()!r}; known: {', '.join(MURA_STUDY_TYPES)}")
        if t not in out:
            out.append(t)
    return tuple(out) or None


def group_by_study(views: Iterable[View]) -> "OrderedDict[str, list[View]]":
    """Views by study key, studies and views in the order given."""
    out: "OrderedDict[str, list[View]]" = OrderedDict()
    for v in views:
        out.setdefault(v.study_key, []).append(v)
    return out


# -- MURA-v1.1 ---------------------------------------------------------------------------------


def _mura_dir(root: Path, split: str) -> Path | None:
    for candidate in (root / MURA_FOLDER, root):
        if (candidate / f"{split}_image_paths.csv").is_file():
            return candidate
    return None


def _csv_rows(path: Path) -> list[list[str]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return [row for row in csv.reader(f) if row and any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc


def _mura_relative(entry: str) -> PurePosixPath:
    """A CSV path without its first component when that names the release (``MURA-v1.1/...``),
    so the release folder may be renamed."""
    parts = PurePosixPath(entry.strip().replace("\\", "/")).parts
    if len(parts) > 1 and parts[0].upper().startswith("MURA"):
        return PurePosixPath(*parts[1:])
    return PurePosixPath(*parts)


def _study_type_of_path(parts: Sequence[str]) -> str | None:
    for part in parts:
        m = _XR_TYPE.match(part)
        if m and m.group(1).upper() in MURA_STUDY_TYPES:
            return m.group(1).upper()
    return None


def _label_from_folder(name: str) -> int | None:
    name = name.lower()
    if name.endswith("_positive"):
        return 1
    if name.endswith("_negative"):
        return 0
    return None


def _label(text: str, where: str) -> int:
    value = text.strip()
    if value not in ("0", "1"):
        raise DatasetError(f"{where}: label {value!r} is neither 0 (normal) nor 1 (abnormal)")
    return int(value)


def read_mura(root: Path | str, split: str = "valid",
              study_types: Iterable[str] | str | None = None) -> list[View]:
    """The views of one split of a MURA-v1.1 folder, in the order of ``{split}_image_paths.csv``.

    A study's label is its line in ``{split}_labeled_studies.csv``; a study missing there (or a
    release without that file) takes it from its folder name (``study1_positive``). Raises
    DatasetError when the CSV is missing or malformed or a study has no label.
    """
    root = Path(root)
    wanted = parse_study_types(study_types)
    base = _mura_dir(root, split)
    if base is None:
        raise DatasetError(f"{root}: no {MURA_FOLDER}/{split}_image_paths.csv")
    labels: dict[str, int] = {}
    labelled = base / f"{split}_labeled_studies.csv"
    if labelled.is_file():
        for n, row in enumerate(_csv_rows(labelled), 1):
            if len(row) < 2:
                raise DatasetError(f"{labelled} line {n}: expected 'study folder/,label'")
            labels[str(_mura_relative(row[0]))] = _label(row[1], f"{labelled} line {n}")
    else:
        log.warning("%s is missing: labels come from the study folder names", labelled)
    views: list[View] = []
    listing = base / f"{split}_image_paths.csv"
    for n, row in enumerate(_csv_rows(listing), 1):
        rel = _mura_relative(row[0])
        study = rel.parent
        study_type = _study_type_of_path(rel.parts)
        if wanted is not None and study_type not in wanted:
            continue
        label = labels.get(str(study))
        if label is None:
            label = _label_from_folder(study.name)
        if label is None:
            raise DatasetError(f"{listing} line {n}: study {row[0].strip().rsplit('/', 1)[0]} has "
                               f"no label in {labelled.name} and its folder name does not say")
        views.append(View(path=base.joinpath(*rel.parts), study_key=f"{base.name}/{study}",
                          label=label, study_type=study_type))
    return views


# -- DICOM with truth.csv ----------------------------------------------------------------------


def _dicom_dir(root: Path) -> Path | None:
    for candidate in (root / DICOM_FOLDER, root):
        if (candidate / TRUTH_FILE).is_file():
            return candidate
    return None


def _boxes(text: str, where: str) -> dict[str, list[Box]]:
    """truth.csv's boxes column: SOP Instance UID -> its boxes."""
    if not text.strip():
        return {}
    try:
        items = json.loads(text)
        if not isinstance(items, list):
            raise TypeError("not a JSON list")
        out: dict[str, list[Box]] = {}
        for item in items:
            box = Box(float(item["x0"]), float(item["y0"]), float(item["x1"]), float(item["y1"]),
                      str(item.get("finding", "")))
            out.setdefault(str(item["sop_instance_uid"]), []).append(box)
        return out
    except (ValueError, TypeError, KeyError) as exc:
        raise DatasetError(f"{where}: boxes is not a JSON list of {{sop_instance_uid, finding, "
                           f"x0, y0, x1, y1}}: {exc}") from exc


def read_dicom_truth(root: Path | str, split: str | None = "valid",
                     study_types: Iterable[str] | str | None = None) -> list[View]:
    """The views of the studies in ``truth.csv`` (of ``split``) found under the DICOM folder.

    Rows are kept whose ``split`` is ``split`` (every row when ``split`` is None or the column is
    absent). A study's type is truth.csv's ``study_type``, else what its headers name
    (:func:`dicom_io.bodypart.study_type_of`, as the daemon reads it). Files that are not DICOM
    are skipped; studies are in truth.csv's order, views in path order. Raises DatasetError for
    a missing or malformed truth.csv.
    """
    root = Path(root)
    wanted = parse_study_types(study_types)
    folder = _dicom_dir(root)
    if folder is None:
        raise DatasetError(f"{root}: no {DICOM_FOLDER}/{TRUTH_FILE}")
    truth_path = folder / TRUTH_FILE
    truth: "OrderedDict[str, tuple[int, str | None, dict[str, list[Box]]]]" = OrderedDict()
    try:
        with truth_path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"study_instance_uid", "label"} - set(reader.fieldnames or ())
            if missing:
                raise DatasetError(f"{truth_path}: no column {', '.join(sorted(missing))} "
                                   f"(expected {','.join(TRUTH_COLUMNS)})")
            has_split = "split" in (reader.fieldnames or ())
            for n, row in enumerate(reader, 2):
                where = f"{truth_path} line {n}"
                if split is not None and has_split and (row.get("split") or "").strip() != split:
                    continue
                uid = (row.get("study_instance_uid") or "").strip()
                if not uid:
                    raise DatasetError(f"{where}: empty study_instance_uid")
                study_type = parse_study_types([row.get("study_type") or ""])
                truth[uid] = (_label(row.get("label") or "", where), study_type[0] if study_type else None,
                              _boxes(row.get("boxes") or "", where))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{truth_path}: cannot read: {exc}") from exc
    except ValueError as exc:  # an unknown study type
        raise DatasetError(f"{truth_path}: {exc}") from exc
    found: dict[str, list[tuple[Path, str, str | None]]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p != truth_path):
        try:
            ds = dcmread(path, stop_before_pixels=True,
                         specific_tags=["StudyInstanceUID", "SOPInstanceUID", *TEXT_FIELDS])
            uid, sop = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
        except (InvalidDicomError, AttributeError, ValueError, EOFError, OSError, TypeError):
            log.debug("%s is not a DICOM file with study and SOP instance UIDs: skipped", path)
            continue
        if uid in truth:
            found.setdefault(uid, []).append((path, sop, study_type_of(ds)))
    views: list[View] = []
    for uid, (label, truth_type, boxes) in truth.items():
        files = found.get(uid)
        if not files:
            log.warning("study %s of %s has no DICOM file under %s", uid, truth_path.name, folder)
            continue
        header_types = [t for _, _, t in files if t is not None]
        study_type = truth_type or (max(set(header_types), key=header_types.count) if header_types else None)
        if wanted is not None and study_type not in wanted:
            continue
        sops = {sop for _, sop, _ in files}
        for sop in sorted(set(boxes) - sops):
            log.warning("%s: boxes of SOP instance %s, which is not among study %s's files",
                        truth_path.name, sop, uid)
        views.extend(View(path=p, study_key=uid, label=label, study_type=study_type,
                          sop_instance_uid=sop, boxes=tuple(boxes.get(sop, ())))
                     for p, sop, _ in files)
    return views


# -- either ------------------------------------------------------------------------------------


def detect_layout(root: Path | str, split: str = "valid") -> Layout:
    """Which layout ``root`` holds; DatasetError when none, or both (say which with ``layout``)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    mura = any((d / f"{split}_image_paths.csv").is_file() for d in (root / MURA_FOLDER, root))
    dicom = _dicom_dir(root) is not None
    if mura and dicom:
        raise DatasetError(f"{root}: holds both a MURA-v1.1 split and {DICOM_FOLDER}/{TRUTH_FILE}; "
                           "choose one with layout 'mura' or 'dicom'")
    if mura:
        return "mura"
    if dicom:
        return "dicom"
    raise DatasetError(f"{root}: neither {MURA_FOLDER}/{split}_image_paths.csv nor "
                       f"{DICOM_FOLDER}/{TRUTH_FILE} (see docs/evaluation.md for the layouts)")


def read_views(root: Path | str, split: str = "valid", study_types: Iterable[str] | str | None = None,
               layout: Layout | Literal["auto"] = "auto") -> tuple[Layout, list[View]]:
    """The labelled views of ``root`` in whichever layout it holds (or the one named)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    chosen: Layout = detect_layout(root, split) if layout == "auto" else layout
    if chosen == "mura":
        return chosen, read_mura(root, split, study_types)
    if chosen == "dicom":
        return chosen, read_dicom_truth(root, split, study_types)
    raise ValueError(f"unknown layout {layout!r}: auto, mura or dicom")
