"""``radtriage status``: what the database says, and what the receiver quarantined, as plain
text for a terminal.

:func:`read_quarantine` is also what the dashboard's quarantine page (``/quarantine``,
``/api/quarantine``) shows: one reading of the folder for both.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from db import Database, Delivery, DeliveryState, Study, StudyResult

#: How much of a note is read: the receiver writes three short lines; anything longer is not
#: one of its notes, and the rest of it is not shown.
NOTE_MAX_BYTES = 16 * 1024
#: The note's fields (``daemon.receiver.Receiver._quarantine`` writes them) and their names here.
_NOTE_FIELDS = {"calling AE": "calling_ae", "affected SOP instance": "sop_instance_uid",
                "reason": "reason"}
_STAMP = "%Y%m%dT%H%M%S"  # the receiver names a file by its UTC time: 20260506T080000-1a2b3c4d


@dataclass(frozen=True)
class QuarantinedFile:
    """One file the receiver refused and kept in ``storage/quarantine/``, with its note. The
    note holds the calling AE title, the affected SOP Instance UID and the reason: no patient
    data."""

    name: str  #: the file's name in the folder (``20260506T080000-1a2b3c4d.dcm``)
    at: dt.datetime | None  #: when it was quarantined (UTC), from its name, else the file's time
    calling_ae: str | None
    sop_instance_uid: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "at": None if self.at is None else self.at.isoformat(),
                "calling_ae": self.calling_ae, "sop_instance_uid": self.sop_instance_uid,
                "reason": self.reason}


@dataclass(frozen=True)
class Quarantine:
    folder: Path
    count: int  #: files (``.dcm``) in the folder
    newest: list[QuarantinedFile] = field(default_factory=list)  #: newest first, up to a limit
    error: str | None = None  #: the folder exists but cannot be read: why

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count, "folder": str(self.folder),
                               "files": [f.to_dict() for f in self.newest]}
        if self.error is not None:
            out["error"] = self.error
        return out


def read_quarantine(storage: Path, *, limit: int = 20) -> Quarantine:
    """What ``storage``'s quarantine folder holds: how many files, and the newest ``limit`` of
    them with their notes (only those notes are read: the folder may hold thousands)."""
    from daemon.logs import escape_controls
    from daemon.receiver import QUARANTINE_DIR

    folder = Path(storage) / QUARANTINE_DIR
    try:
        with os.scandir(folder) as entries:
            files = [e for e in entries if e.name.endswith(".dcm") and e.is_file()]
        dated = sorted(((_when(e), e.name) for e in files), key=_newest_first)
    except FileNotFoundError:
        return Quarantine(folder, 0)
    except OSError as exc:
        return Quarantine(folder, 0, error=f"cannot read the folder: {exc.strerror or exc}")
    newest = []
    for at, name in dated[:limit]:
        note = _read_note(folder / f"{name[:-len('.dcm')]}.txt")
        newest.append(QuarantinedFile(
            name=escape_controls(name), at=at, calling_ae=note.get("calling_ae"),
            sop_instance_uid=note.get("sop_instance_uid"),
            reason=note.get("reason") or note.get("problem") or "no reason in the note"))
    return Quarantine(folder, len(files), newest)


def _when(entry: os.DirEntry) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(entry.name[:len("20260506T080000")], _STAMP).replace(
            tzinfo=dt.timezone.utc)
    except ValueError:  # not named by the receiver: the file's own time
        try:
            return dt.datetime.fromtimestamp(entry.stat().st_mtime, dt.timezone.utc)
        except OSError:
            return None


def _newest_first(item: tuple[dt.datetime | None, str]) -> tuple[float, str]:
    at, name = item
    return (-(at.timestamp() if at is not None else 0.0), name)


def _read_note(path: Path) -> dict[str, str]:
    """The fields of a quarantine note; ``problem`` says why there are none."""
    from daemon.logs import escape_controls

    try:
        with path.open("rb") as f:
            text = f.read(NOTE_MAX_BYTES).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return {"problem": "no note beside the file"}
    except OSError as exc:
        return {"problem": f"the note cannot be read: {exc.strerror or exc}"}
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key in _NOTE_FIELDS:
            fields[_NOTE_FIELDS[key]] = escape_controls(value.strip())
    return fields


def _quarantine_lines(q: Quarantine, shown: int) -> tuple[str, list[str]]:
    """The summary line, and the newest ``shown`` files one a line."""
    if q.error is not None:
        return f"quarantine: {q.folder}: {q.error}", []
    if not q.count:
        return f"quarantine: none (in {q.folder})", []
    lines = [f"  {'-' if f.at is None else f'{f.at:%Y-%m-%d %H:%M:%S}'}  from "
             f"{f.calling_ae or '(AE not noted)'}: {f.reason}  ({f.name})" for f in q.newest[:shown]]
    return f"quarantine: {q.count} file(s) in {q.folder} (the newest {len(lines)} at the end)", lines


def render_status(db: Database, *, limit: int = 20, storage: Path | None = None) -> str:
    """``storage``: the storage folder (``storage.path``), whose quarantine is summed up too."""
    lines: list[str] = []
    quarantined: list[str] = []
    with db.session() as s:
        by_state = dict(s.execute(select(Study.state, func.count()).group_by(Study.state)).all())
        lines.append("studies: " + (", ".join(f"{k.value} {v}" for k, v in sorted(
            by_state.items(), key=lambda kv: kv[0].value)) or "none"))
        dstate = dict(s.execute(select(Delivery.state, func.count()).group_by(Delivery.state)).all())
        lines.append("deliveries: " + (", ".join(f"{k.value} {v}" for k, v in sorted(
            dstate.items(), key=lambda kv: kv[0].value)) or "none"))
        if storage is not None:
            summary, quarantined = _quarantine_lines(read_quarantine(storage, limit=5), 5)
            lines.append(summary)
        lines.append("")
        lines.append(f"{'LAST RECEIVED (UTC)':<20} {'STATE':<11} {'TYPE':<8} {'PRIORITY':<8} "
                     f"{'PROB':>5}  {'VIEWS':>5}  STUDY INSTANCE UID")
        studies = s.scalars(select(Study).order_by(Study.last_received_at.desc()).limit(limit)).all()
        for st in studies:
            result = s.scalars(select(StudyResult).where(
                StudyResult.study_id == st.id, StudyResult.superseded.is_(False))
                .order_by(StudyResult.id.desc()).limit(1)).first()
            prob = "-" if result is None or result.probability is None else f"{result.probability:.3f}"
            prio = "-" if result is None else result.priority
            kind = (result.study_type if result is not None else None) or "-"
            lines.append(f"{st.last_received_at:%Y-%m-%d %H:%M:%S} {st.state.value:<11} {kind:<8} "
                         f"{prio:<8} {prob:>5}  {len(st.instances):>5}  {st.study_instance_uid}")
            if st.state_reason:
                lines.append(f"    reason: {st.state_reason}")
            if result is not None and not result.analysed and result.reason:
                lines.append(f"    not analysed: {result.reason}")
            elif result is not None:
                skipped = [sc for sc in result.scores if sc.error]
                if skipped:
                    lines.append(f"    {len(result.scores) - len(skipped)} of {len(result.scores)} "
                                 "views analysed; not analysed:")
                    lines.extend(f"      {sc.instance.sop_instance_uid}: {sc.error}" for sc in skipped)
        waiting = s.scalars(select(Delivery).where(
            Delivery.state.in_([DeliveryState.PENDING, DeliveryState.SENDING, DeliveryState.DEAD]))
            .order_by(Delivery.next_attempt_at).limit(limit)).all()
        if waiting:
            lines.append("")
            lines.append("queue:")
            for d in waiting:
                lines.append(f"  {d.state.value:<8} {d.object_kind} to {d.destination} "
                             f"attempts {d.attempts}, next {d.next_attempt_at:%H:%M:%S}"
                             + (f": {d.last_error}" if d.last_error else ""))
    if quarantined:
        lines.append("")
        lines.append("quarantined (newest first; radtriage refused these and kept them with a note):")
        lines.extend(quarantined)
    return "\n".join(lines) + "\n"
