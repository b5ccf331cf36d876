"""daemon.cli: ``radtriage retention`` and ``radtriage purge`` against a real SQLite database."""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from sqlalchemy import select

from daemon.cli import main
from daemon.retention import study_ref
from db import Database, Event, EventKind, Instance, Study, StudyState
from tests.unit.test_retention import make_study


pytestmark = pytest.mark.usefixtures("cli_env")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, Path, Database]]:
    """A config file (retention after 30 days), its storage folder and its migrated database."""
    root = tmp_path / "storage"
    url = f"sqlite:///{tmp_path / 'radtriage.db'}"
    config = tmp_path / "radtriage.yaml"
    config.write_text(yaml.safe_dump({"storage": {"path": str(root), "retention_days": 30},
                                      "database": {"url": url}}), encoding="utf-8")
    db = Database(url)
    db.migrate()
    try:
        yield config, root, db
    finally:
        db.dispose()


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def _stored(db: Database, root: Path) -> list[bool]:
    with db.session() as s:
        return [(root / i.path).is_file() for i in s.scalars(select(Instance).order_by(Instance.id))]


# -- retention ------------------------------------------------------------------------------------


def test_retention_dry_run_then_for_real(site) -> None:  # type: ignore[no-untyped-def]
    config, root, db = site
    make_study(db, root, size=1_000_000)  # received 40 days ago (see make_study)
    code, out, err = run("retention", "--dry-run", "--config", str(config))
    assert code == 0, err
    assert out.startswith("dry run: 1 study(ies) received before ")
    assert "would delete 2 instance file(s) (2.0 MB), 0 already missing" in out
    assert _stored(db, root) == [True, True]
    code, out, err = run("retention", "--config", str(config))
    assert code == 0, err
    assert out.startswith("retention: 1 study(ies)") and "deleted 2 instance file(s) (2.0 MB)" in out
    assert _stored(db, root) == [False, False]
    code, out, _ = run("retention", "--config", str(config))
    assert code == 0 and "0 study(ies)" in out and "deleted 0 instance file(s)" in out


def test_retention_with_retention_days_0_does_nothing(tmp_path: Path) -> None:
    config = tmp_path / "radtriage.yaml"
    config.write_text(yaml.safe_dump({"storage": {"path": str(tmp_path / "s")},
                                      "database": {"url": f"sqlite:///{tmp_path / 'r.db'}"}}),
                      encoding="utf-8")
    code, out, err = run("retention", "--config", str(config))
    assert code == 0, err
    assert "storage.retention_days is 0" in out and "kept forever" in out
    assert not (tmp_path / "r.db").exists()


def test_retention_exits_1_when_a_file_cannot_be_deleted(site, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    config, root, db = site
    make_study(db, root, views=1)

    def unlink(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "unlink", unlink)
    code, out, err = run("retention", "--config", str(config))
    assert code == 1
    assert "1 could not be deleted (retried at the next pass)" in out
    logged = capsys.readouterr().err  # the warning, through the log handler on stderr
    assert "WARNING daemon.retention" in logged and "Permission denied" in logged


# -- purge ----------------------------------------------------------------------------------------


def test_purge_with_yes(site) -> None:  # type: ignore[no-untyped-def]
    config, root, db = site
    uid, other = make_study(db, root), make_study(db, root)
    code, out, err = run("purge", uid, "--yes", "--config", str(config))
    assert code == 0, err
    assert f"purged study {uid} (was delivered): 2 instance(s), 1 result(s)" in out
    assert "3 file(s) (0.0 MB) deleted" in out
    assert f"audit: a 'purged' event names the study as {study_ref(uid)}" in out
    assert not (root / uid).exists()
    with db.session() as s:
        assert [st.study_instance_uid for st in s.scalars(select(Study))] == [other]
        [audit] = s.scalars(select(Event).where(Event.kind == EventKind.PURGED)).all()
        assert audit.study_id is None and uid not in audit.detail


def test_purge_asks_on_a_terminal(site, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    config, root, db = site
    uid = make_study(db, root)
    monkeypatch.setattr(sys, "stdin", Terminal("no\n"))
    code, out, err = run("purge", uid, "--config", str(config))
    assert code == 1 and "not purged" in err
    assert f"Delete study {uid}" in out and "cannot be undone" in out
    assert _stored(db, root) == [True, True]
    monkeypatch.setattr(sys, "stdin", Terminal("yes\n"))
    code, out, err = run("purge", uid, "--config", str(config))
    assert code == 0, err
    assert f"purged study {uid}" in out and _stored(db, root) == []


def test_purge_refuses_without_yes_when_there_is_no_terminal(site, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    config, root, db = site
    uid = make_study(db, root)
    monkeypatch.setattr(sys, "stdin", io.StringIO("yes\n"))
    code, out, err = run("purge", uid, "--config", str(config))
    assert code == 2 and out == ""
    assert "give --yes to confirm" in err
    assert _stored(db, root) == [True, True]


def test_purge_of_an_unknown_uid_exits_1(site) -> None:  # type: ignore[no-untyped-def]
    config, _, _ = site
    code, out, err = run("purge", "1.2.3.999", "--yes", "--config", str(config))
    assert code == 1 and out == ""
    assert "radtriage: purge: no study with Study Instance UID 1.2.3.999" in err


def test_purge_of_something_not_a_uid_exits_2(site) -> None:  # type: ignore[no-untyped-def]
    config, root, _ = site
    code, _, err = run("purge", "..", "--yes", "--config", str(config))
    assert code == 2 and "not a valid UID" in err
    assert root.parent.is_dir()


def test_purge_of_a_study_being_scored_needs_force(site) -> None:  # type: ignore[no-untyped-def]
    config, root, db = site
    uid = make_study(db, root, state=StudyState.SCORING)
    code, out, err = run("purge", uid, "--yes", "--config", str(config))
    assert code == 1 and out == ""
    assert f"study {uid} is scoring: it is being scored" in err and "--force" in err
    assert _stored(db, root) == [True, True]
    code, out, err = run("purge", uid, "--yes", "--force", "--config", str(config))
    assert code == 0, err
    assert f"purged study {uid} (was scoring, forced)" in out
