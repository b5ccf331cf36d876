"""The storage layout and durable writes.

Instances live at ``<root>/<study>/<series>/<sop>.dcm``; outputs radtriage makes live at
``<root>/outputs/<study>/<sop>.dcm``. A write goes to a temporary file in ``<root>/.tmp``, is
fsynced, renamed into place, and the folder is fsynced: after :func:`durable_write` returns,
the bytes survive a power cut.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable

from dicom_io.errors import InvalidInstance, StorageError, StorageFull

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
TMP_DIR = ".tmp"
OUTPUTS_DIR = "outputs"


def check_uid(value: object, what: str) -> str:
    """Return ``value`` as a UID string, or raise InvalidInstance (it becomes a path component)."""
    text = str(value or "").strip(" \x00")
    if not text or len(text) > 64 or not _UID.fullmatch(text):
        raise InvalidInstance(f"{what} {text[:80]!r} is not a valid UID")
    return text


def instance_relpath(study_uid: str, series_uid: str, sop_uid: str) -> str:
    return f"{check_uid(study_uid, 'StudyInstanceUID')}/{check_uid(series_uid, 'SeriesInstanceUID')}/" \
           f"{check_uid(sop_uid, 'SOPInstanceUID')}.dcm"


def output_relpath(study_uid: str, sop_uid: str, suffix: str = ".dcm") -> str:
    """Where an object radtriage made for a study lives: a DICOM object by its SOP Instance UID,
    an HL7 message (``suffix=".hl7"``) by its message control ID (digits)."""
    return (f"{OUTPUTS_DIR}/{check_uid(study_uid, 'StudyInstanceUID')}/"
            f"{check_uid(sop_uid, 'SOPInstanceUID')}{suffix}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdirs(root: Path, target_dir: Path) -> None:
    """Create ``target_dir`` and fsync each parent whose entry list changed."""
    missing = []
    d = target_dir
    while not d.exists() and d != root and root in d.parents:
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        _fsync_dir(d.parent)


def _convert(exc: OSError, what: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"no space left on the storage volume writing {what}")
    return StorageError(f"cannot write {what}: {exc.strerror or exc}")


def write_temp(root: Path, chunks: Iterable[bytes | memoryview]) -> tuple[Path, int]:
    """Write ``chunks`` to a new fsynced file in ``root/.tmp``; return its path and size.

    Raises StorageFull or StorageError; on error no temporary file is left behind.
    """
    tmp_dir = root / TMP_DIR
    tmp_name: str | None = None
    size = 0
    try:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, suffix=".part")
        with os.fdopen(fd, "wb", buffering=0) as fh:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    n = fh.write(view)
                    size += n
                    view = view[n:]
            os.fsync(fh.fileno())
    except OSError as exc:
        if tmp_name is not None:
            discard(Path(tmp_name))
        raise _convert(exc, "a received object") from exc
    return Path(tmp_name), size


def commit_temp(root: Path, tmp: Path, relpath: str) -> Path:
    """Rename a file from :func:`write_temp` to ``root/relpath`` and fsync its folder."""
    dest = root / relpath
    try:
        _mkdirs(root, dest.parent)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except OSError as exc:
        discard(tmp)
        raise _convert(exc, relpath) from exc
    return dest


def discard(path: Path) -> None:
    """Remove a temporary file; a file already gone is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def durable_write(root: Path, relpath: str, chunks: Iterable[bytes | memoryview]) -> int:
    """Write ``chunks`` to ``root/relpath`` atomically and durably; return the bytes written.

    Raises StorageFull when the volume is full, StorageError for any other OS error. On error
    nothing is left at the destination and no temporary file remains.
    """
    tmp, size = write_temp(root, chunks)
    commit_temp(root, tmp, relpath)
    return size


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    """The hex SHA-256 of a file, read a block at a time (an audit names a copy by it)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def free_bytes(root: Path) -> int:
    st = os.statvfs(root)
    return st.f_bavail * st.f_frsize


def clear_temp(root: Path) -> int:
    """Remove what an interrupted write left in ``root/.tmp`` (call at start, before any write):
    such a file was never renamed into place, so no sender was told it was stored."""
    tmp_dir = root / TMP_DIR
    if not tmp_dir.is_dir():
        return 0
    removed = 0
    for leftover in tmp_dir.iterdir():
        if leftover.is_file():
            discard(leftover)
            removed += 1
    return removed
