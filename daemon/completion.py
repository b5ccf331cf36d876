"""When is a study complete? A pure rule, and the sweep that applies it to the database.

A study is complete when

* the association that brought its latest instance was *released* and no instance of it came
  for ``release_grace_s`` since, or
* no instance of it came for ``stable_s``, whatever happened to the association (aborted,
  still open, or lost to a restart of the daemon).

The state lives in the database, so after a restart the sweep simply evaluates it again.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select
from sqlalchemy.orm import joinedload

from daemon.logs import study_logger
from db import Association, Database, Event, EventKind, Study, StudyState

log = logging.getLogger(__name__)


def is_complete(
    now: dt.datetime,
    *,
    last_received_at: dt.datetime,
    released_at: dt.datetime | None,
    release_grace_s: float,
    stable_s: float,
) -> bool:
    """The completion rule; ``released_at`` is None unless the association was released."""
    quiet = (now - last_received_at).total_seconds()
    if quiet >= stable_s:
        return True
    if released_at is None:
        return False
    since_release = (now - released_at).total_seconds()
    return since_release >= release_grace_s and quiet >= release_grace_s


def sweep(db: Database, now: dt.datetime, *, release_grace_s: float, stable_s: float) -> list[int]:
    """Mark every receiving study that is now complete; return their ids."""
    done: list[int] = []
    with db.session() as s:
        studies = s.scalars(
            select(Study)
            .where(Study.state == StudyState.RECEIVING)
            .options(joinedload(Study.last_association))
            .with_for_update(of=Study, skip_locked=True)
        ).all()
        for study in studies:
            assoc: Association | None = study.last_association
            released_at = assoc.ended_at if assoc is not None and assoc.end_reason == "released" else None
            if is_complete(now, last_received_at=study.last_received_at, released_at=released_at,
                           release_grace_s=release_grace_s, stable_s=stable_s):
                study.state = StudyState.COMPLETE
                study.completed_at = now
                study.retry_at, study.retries = None, 0  # a new revision: scored at once
                rule = "association released" if released_at is not None and \
                    (now - study.last_received_at).total_seconds() < stable_s else "stable"
                s.add(Event(at=now, study_id=study.id, kind=EventKind.COMPLETED,
                            detail=f"complete ({rule}), revision {study.revision}"))
                study_logger(log, study.study_instance_uid).info("study complete (%s)", rule)
                done.append(study.id)
    return done
