"""``radtriage score``: files and folders scored offline (no network, no database), one result
per study, decided as the daemon decides it.

The files given stand for what a PACS would send, so they are taken as the daemon's receiver
takes instances (``daemon.receiver._store``): the first copy of a SOP Instance UID is the
instance; a second copy with the same data set is the same instance, counted once; a second
copy with other content, or naming another study or series, is refused and not scored (the
daemon answers it 0xC409 and quarantines it), its reason naming both copies and their SHA-256.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TextIO

from daemon.config import Config

#: Bytes hashed per read.
_CHUNK = 1 << 20


def iter_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files named, and the files under the folders named (sorted), in order."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file()))
        else:
            files.append(p)
    return files


# -- copies of one instance ---------------------------------------------------------------------


@dataclass(frozen=True)
class Copy:
    """One file's copy of an instance: its UIDs and digests."""

    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    #: SHA-256 of the whole file (what ``sha256sum`` prints)
    file_sha256: str
    #: SHA-256 of its data set, after the File Meta Information: what a C-STORE carries, so
    #: what the daemon compares (it writes the file meta itself)
    dataset_sha256: str


def digests(path: Path) -> tuple[str, str]:
    """(SHA-256 of the file, SHA-256 of its data set after the File Meta Information)."""
    from pynetdicom.dsutils import split_dataset

    _meta, offset = split_dataset(path)
    whole, dataset = hashlib.sha256(), hashlib.sha256()
    with open(path, "rb") as fp:
        head = fp.read(offset)
        whole.update(head)
        while chunk := fp.read(_CHUNK):
            whole.update(chunk)
            dataset.update(chunk)
    return whole.hexdigest(), dataset.hexdigest()


def second_copy(first: Copy, other: Copy) -> str | None:
    """Why ``other``, a later copy of ``first``'s SOP Instance UID, is not scored; None when it
    is the same instance (the same data set: counted once). The daemon's rule and words
    (``daemon.receiver``: ``_refuse_conflict``, ``_refuse_other_bytes``)."""
    uid = first.sop_uid
    if (other.study_uid, other.series_uid) != (first.study_uid, first.series_uid):
        return (f"SOP Instance UID {uid} belongs to study {first.study_uid} series "
                f"{first.series_uid} in {first.path} (sha256 {first.file_sha256}); this copy "
                f"(sha256 {other.file_sha256}) names study {other.study_uid} series "
                f"{other.series_uid}: a SOP Instance UID never moves (the daemon refuses such a "
                "copy: 0xC409)")
    if other.dataset_sha256 == first.dataset_sha256:
        return None
    return (f"SOP Instance UID {uid} is also in {first.path} (sha256 {first.file_sha256}) with "
            f"other content (this copy: sha256 {other.file_sha256}): changed content needs a new "
            "SOP Instance UID (the daemon refuses such a copy: 0xC409)")


# -- scoring ------------------------------------------------------------------------------------


def score_paths(paths: Sequence[str | Path], config: Config, source: str | None = None) -> list[dict]:
    """Score files and folders offline; one dict per study (the ``--json`` shape).

    Each study: its UIDs, ``verdict`` (ABNORMAL, NORMAL, NOT ANALYSED), probability, abnormal,
    priority, the Series Description the daemon would write, ``reason`` when not analysed,
    ``views`` (one per instance, with the file it came from), ``duplicates`` (identical
    copies, counted once) and ``refused`` (copies not scored, with why). Files that are not
    readable DICOM make a last row whose study_instance_uid is None.
    """
    from pydicom.errors import InvalidDicomError

    from daemon.service import load_scorer, model_preprocessing
    from daemon.worker import build_pool, score_views
    from dicom_io.errors import DicomIOError, describe
    from dicom_io.prepare import read_view

    scorer = load_scorer(config)
    pool = build_pool(config, model_preprocessing(config, scorer.card, source))
    studies: "OrderedDict[str, list[tuple[int, str, Path]]]" = OrderedDict()
    extra: dict[str, dict[str, list[dict]]] = {}  # study -> duplicates / refused
    first: dict[str, Copy] = {}
    unreadable: list[dict] = []
    max_instance = int(config.limits.max_instance_mb * 1024 * 1024)
    for i, f in enumerate(iter_files(paths)):
        try:
            # the header, once the file's structure is whole (a file cut short says where);
            # a deflated one inflated as a stream
            ds = read_view(f, pool.opts, stop_before_pixels=True, max_inflated=max_instance)
            copy = Copy(f, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                        str(ds.SOPInstanceUID), *digests(f))
        except DicomIOError as exc:  # radtriage's own reason: what is wrong, and where
            unreadable.append({"sop_instance_uid": None, "path": str(f), "probability": None,
                               "error": str(exc)})
            continue
        except (OSError, InvalidDicomError, AttributeError, ValueError) as exc:
            unreadable.append({"sop_instance_uid": None, "path": str(f), "probability": None,
                               "error": f"not a readable DICOM file: {describe(exc)}"})
            continue
        kept = first.get(copy.sop_uid)
        if kept is None:
            first[copy.sop_uid] = copy
            studies.setdefault(copy.study_uid, []).append((i, copy.sop_uid, f))
            continue
        why = second_copy(kept, copy)
        lists = extra.setdefault(kept.study_uid, {"duplicates": [], "refused": []})
        if why is None:
            lists["duplicates"].append({"path": str(f), "sop_instance_uid": copy.sop_uid,
                                        "same_as": str(kept.path)})
        else:
            lists["refused"].append({"path": str(f), "sop_instance_uid": copy.sop_uid,
                                     "sha256": copy.file_sha256, "error": why})
    with pool:
        scored = [(uid, views, score_views(scorer, pool, views)) for uid, views in studies.items()]
    rows = [_study_row(uid, views, outcomes, scorer.card, config, extra.get(uid, {}))
            for uid, views, outcomes in scored]
    if unreadable:
        rows.append({"study_instance_uid": None, "study_type": None, "verdict": "NOT ANALYSED",
                     "views_analysed": 0, "views_not_analysed": len(unreadable),
                     "probability": None, "abnormal": None, "priority": config.priority.default,
                     "series_description": None, "reason": "not readable DICOM files",
                     "model": None, "notice": None, "views": unreadable, "duplicates": [],
                     "refused": []})
    return rows


def _study_row(study_uid: str, views: list[tuple[int, str, Path]], outcomes: list, card: Any,
               config: Config, extra: dict[str, list[dict]]) -> dict:
    """One study's result, decided as ``daemon.worker`` decides it (the same policy functions,
    the same report, its verdict and Series Description)."""
    from dicom_io.bodypart import study_type_of_study
    from dicom_io.outputs import verdict
    from dicom_io.reasons import not_analysed_reason
    from dicom_io.sr import TriageReport, ViewScore, series_description
    from inference.policy import is_abnormal, priority_for, study_probability

    probability = study_probability(o.probability for o in outcomes)
    threshold = config.model.operating_threshold(card)
    rules = [(r.min_probability, r.priority) for r in config.priority.rules]
    report = TriageReport(
        probability=probability,
        abnormal=None if probability is None else is_abnormal(probability, threshold),
        priority=priority_for(probability, rules, config.priority.default),
        threshold=threshold, algorithm_name=card.display_name, algorithm_version=card.version,
        views=tuple(ViewScore(o.sop_instance_uid, o.probability, o.error, box=o.box,
                              study_type=o.study_type) for o in outcomes),
        reason=None if probability is not None else not_analysed_reason(o.error for o in outcomes),
        notice=card.notice, study_type=study_type_of_study(o.study_type for o in outcomes))
    analysed = sum(o.probability is not None for o in outcomes)
    return {
        "study_instance_uid": study_uid,
        "study_type": report.study_type,
        "verdict": verdict(report),
        "views_analysed": analysed,
        "views_not_analysed": len(outcomes) - analysed,
        "probability": probability,
        "abnormal": report.abnormal,
        "priority": report.priority,
        "series_description": series_description(report),
        "reason": report.reason,
        "model": f"{card.display_name} {card.version}",
        "notice": card.notice,
        "views": [{"sop_instance_uid": o.sop_instance_uid, "path": str(p), "probability": o.probability,
                   "study_type": o.study_type, "frames": o.frames, "error": o.error,
                   "peak_box": list(o.box) if o.box is not None else None}
                  for o, (_, _, p) in zip(outcomes, views)],
        "duplicates": extra.get("duplicates", []),
        "refused": extra.get("refused", []),
    }


# -- the table ----------------------------------------------------------------------------------


def write_table(rows: list[dict], out: TextIO) -> None:
    """The rows as ``radtriage score`` prints them: a line per study (its verdict, probability,
    priority, views analysed), then a line per file under it (its probability, or why not)."""
    for notice in sorted({r["notice"] for r in rows if r["notice"]}):
        print(notice, file=out)
    print(f"{'STUDY INSTANCE UID':<64}  {'TYPE':<8}  {'VERDICT':<12}  {'PROB':>5}  {'PRIORITY':<8}  "
          "VIEWS", file=out)
    for r in rows:
        prob = "-" if r["probability"] is None else f"{r['probability']:.3f}"
        print(f"{r['study_instance_uid'] or '(unreadable files)':<64}  {r['study_type'] or '-':<8}  "
              f"{r['verdict']:<12}  {prob:>5}  {r['priority']:<8}  "
              f"{r['views_analysed']}/{len(r['views'])} analysed", file=out)
        for v in r["views"]:
            what = f"{v['probability']:.3f}" if v["probability"] is not None else f"not analysed: {v['error']}"
            print(f"    {v['path']}: {what}", file=out)
        for d in r["duplicates"]:
            print(f"    {d['path']}: the same instance as {d['same_as']} (counted once)", file=out)
        for d in r["refused"]:
            print(f"    {d['path']}: not scored: {d['error']}", file=out)
