"""dicom_io.storage: the layout, UID checks and durable, atomic writes."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from dicom_io.errors import InvalidInstance, StorageError, StorageFull
from dicom_io.storage import (
    TMP_DIR,
    check_uid,
    commit_temp,
    durable_write,
    instance_relpath,
    output_relpath,
    write_temp,
)


def leftovers(root: Path) -> list[Path]:
    tmp = root / TMP_DIR
    return sorted(tmp.iterdir()) if tmp.exists() else []


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# -- durable_write -------------------------------------------------------------------------------


def test_durable_write_creates_nested_dirs_with_exact_content(tmp_path: Path) -> None:
    root = tmp_path / "store"
    payload = [b"\x00" * 128, b"DICM", memoryview(b"abc" * 1000), bytearray(b"\xff\xfe")]
    n = durable_write(root, "1.2.3/4.5.6/7.8.9.dcm", payload)
    dest = root / "1.2.3" / "4.5.6" / "7.8.9.dcm"
    expected = b"".join(bytes(c) for c in payload)
    assert n == len(expected) == 128 + 4 + 3000 + 2
    assert dest.read_bytes() == expected
    assert leftovers(root) == []
    assert all_files(root) == ["1.2.3/4.5.6/7.8.9.dcm"]


def test_durable_write_empty_and_overwrite(tmp_path: Path) -> None:
    assert durable_write(tmp_path, "a/b.dcm", []) == 0
    assert (tmp_path / "a" / "b.dcm").read_bytes() == b""
    durable_write(tmp_path, "a/b.dcm", [b"new"])
    assert (tmp_path / "a" / "b.dcm").read_bytes() == b"new"
    assert leftovers(tmp_path) == []


def test_durable_write_large_chunks(tmp_path: Path) -> None:
    big = os.urandom(3 * 1024 * 1024 + 7)
    assert durable_write(tmp_path, "x/y.dcm", [big[:1000], big[1000:]]) == len(big)
    assert (tmp_path / "x" / "y.dcm").read_bytes() == big


def test_write_temp_then_commit(tmp_path: Path) -> None:
    tmp, size = write_temp(tmp_path, [b"hello"])
    assert tmp.parent == tmp_path / TMP_DIR and tmp.read_bytes() == b"hello" and size == 5
    dest = commit_temp(tmp_path, tmp, "outputs/1.2/3.4.dcm")
    assert dest == tmp_path / "outputs" / "1.2" / "3.4.dcm"
    assert dest.read_bytes() == b"hello"
    assert not tmp.exists() and leftovers(tmp_path) == []


# -- check_uid -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    ["../x", "1.2/3", "", "  ", None, "1" * 65, "..", "1..2", ".1.2", "1.2.", "1.2.3a", "1.2 .3",
     "1.2\\3", "/1.2", "1.2.3\n4",
     pytest.param("1.2.3\n\x00", id="newline-before-NUL-padding")],
)
def test_check_uid_rejects(bad: object) -> None:
    with pytest.raises(InvalidInstance, match="SOPInstanceUID"):
        check_uid(bad, "SOPInstanceUID")


@pytest.mark.parametrize(
    ("given", "expected"),
    [("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1"),
     ("1.2.3\x00", "1.2.3"),         # UI values are padded with a NUL to even length
     (" 1.2.3 ", "1.2.3"),
     ("1" * 64, "1" * 64),          # 64 characters is the maximum
     ("0", "0")],
)
def test_check_uid_accepts(given: str, expected: str) -> None:
    assert check_uid(given, "UID") == expected


def test_relpaths_validate_every_component() -> None:
    assert instance_relpath("1.2", "1.3", "1.4") == "1.2/1.3/1.4.dcm"
    assert output_relpath("1.2", "1.5") == "outputs/1.2/1.5.dcm"
    with pytest.raises(InvalidInstance, match="SeriesInstanceUID"):
        instance_relpath("1.2", "../../etc", "1.4")
    with pytest.raises(InvalidInstance, match="StudyInstanceUID"):
        output_relpath("..", "1.5")


# -- errors become StorageFull / StorageError, nothing left behind -------------------------------


def _raise(code: int):  # type: ignore[no-untyped-def]
    def boom(*_a, **_k):  # type: ignore[no-untyped-def]
        raise OSError(code, os.strerror(code))
    return boom


@pytest.mark.parametrize(("code", "exc"), [(errno.ENOSPC, StorageFull), (errno.EDQUOT, StorageFull),
                                           (errno.EIO, StorageError)])
def test_fsync_error_is_converted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  code: int, exc: type) -> None:
    monkeypatch.setattr(os, "fsync", _raise(code))
    with pytest.raises(exc) as info:
        durable_write(tmp_path, "1.2/3.4/5.6.dcm", [b"data"])
    if exc is StorageError:
        assert not isinstance(info.value, StorageFull)
    monkeypatch.undo()
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "1.2").exists()


def test_write_enospc_is_storage_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fh):  # type: ignore[no-untyped-def]
            self.fh = fh
            self.calls = 0

        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

        def __exit__(self, *exc):  # type: ignore[no-untyped-def]
            self.fh.close()

        def fileno(self) -> int:
            return self.fh.fileno()

        def write(self, data) -> int:  # type: ignore[no-untyped-def]
            self.calls += 1
            if self.calls > 1:  # the first chunk fits, the second does not
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(data)

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: FullDisk(real_fdopen(fd, *a, **k)))
    with pytest.raises(StorageFull, match="no space left"):
        durable_write(tmp_path, "1.2/3.4/5.6.dcm", [b"first", b"second"])
    monkeypatch.undo()
    assert leftovers(tmp_path) == []
    assert all_files(tmp_path) == []


def test_commit_enospc_removes_the_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp, _ = write_temp(tmp_path, [b"data"])
    monkeypatch.setattr(os, "replace", _raise(errno.ENOSPC))
    with pytest.raises(StorageFull):
        commit_temp(tmp_path, tmp, "1.2/3.4.dcm")
    monkeypatch.undo()
    assert not tmp.exists()
    assert not (tmp_path / "1.2" / "3.4.dcm").exists()
    assert leftovers(tmp_path) == []
