"""What the dashboard reads from (and the one thing it changes in) the database.

Every function takes a :class:`db.Database` and plain arguments and returns plain dicts and
lists (what the JSON API returns and the templates show), so the pages and the API cannot
disagree. Nothing here reads patient data: the database holds none.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

from sqlalchemy import case, func, select

from db import (
    Database,
    Delivery,
    DeliveryState,
    Event,
    EventKind,
    ImageScore,
    Instance,
    OutputObject,
    Study,
    StudyResult,
    StudyState,
)

#: Worklist order: the most urgent first; a study without a result yet after every scored one.
PRIORITY_RANK = {"HIGH": 0, "ELEVATED": 1, "ROUTINE": 2}
_RESULT_RANK = case(PRIORITY_RANK, value=StudyResult.priority, else_=3)
_DELIVERY_RANK = case(PRIORITY_RANK, value=Delivery.priority, else_=3)


#: The flag of a result the model could not give: its priority is only the default the PACS
#: was sent with the NOT ANALYSED report, and a ROUTINE badge would read as "the AI saw it".
NOT_ANALYSED = "NOT ANALYSED"


def flag(priority: str | None, analysed: bool | None) -> str | None:
    """What a study's badge says: HIGH, ELEVATED, ROUTINE, or NOT ANALYSED; None: no result
    yet. The worklist, the study page, the upload page and their JSON twins all use this."""
    if priority is None and analysed is None:
        return None
    return NOT_ANALYSED if analysed is False else priority


class NotFound(LookupError):
    """No such study or delivery."""


class RetryRefused(ValueError):
    """A delivery that cannot be retried; the message says why."""


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _seconds(a: dt.datetime | None, b: dt.datetime | None) -> float | None:
    return None if a is None or b is None else round((b - a).total_seconds(), 3)


def _current_results():  # type: ignore[no-untyped-def]
    """Study id -> the id of its current (newest, not superseded) result."""
    return (select(StudyResult.study_id, func.max(StudyResult.id).label("rid"))
            .where(StudyResult.superseded.is_(False)).group_by(StudyResult.study_id).subquery())


def _result_dict(r: StudyResult | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"id": r.id, "revision": r.study_revision, "created_at": _iso(r.created_at),
            "analysed": r.analysed, "reason": r.reason, "probability": r.probability,
            "abnormal": r.abnormal, "priority": r.priority, "flag": flag(r.priority, r.analysed),
            "threshold": r.threshold,
            "model": f"{r.model_name} {r.model_version}", "superseded": r.superseded,
            "series_description": r.series_description, "study_type": r.study_type,
            "sr_sop_instance_uid": r.sr_sop_instance_uid}


def worklist(db: Database, now: dt.datetime, *, days: float = 7, limit: int = 200,
             state: str | None = None) -> list[dict[str, Any]]:
    """Studies last received within ``days``: HIGH, ELEVATED, ROUTINE, then not yet scored;
    oldest arrival first within each. ``state``: only studies in that state."""
    if state is not None and state not in {s.value for s in StudyState}:
        raise ValueError(f"state {state!r} is not one of {', '.join(s.value for s in StudyState)}")
    cur = _current_results()
    views = (select(Instance.study_id, func.count().label("n")).group_by(Instance.study_id).subquery())
    q = (select(Study, StudyResult, views.c.n)
         .outerjoin(cur, cur.c.study_id == Study.id)
         .outerjoin(StudyResult, StudyResult.id == cur.c.rid)
         .outerjoin(views, views.c.study_id == Study.id)
         .where(Study.last_received_at >= now - dt.timedelta(days=days)))
    if state is not None:
        q = q.where(Study.state == StudyState(state))
    q = q.order_by(_RESULT_RANK, Study.first_received_at, Study.id).limit(limit)
    rows = []
    with db.session() as s:
        for study, result, n in s.execute(q).all():
            rows.append({
                "id": study.id, "study_instance_uid": study.study_instance_uid,
                "accession_number": study.accession_number, "state": study.state.value,
                "state_reason": study.state_reason, "calling_ae": study.calling_ae,
                "first_received_at": _iso(study.first_received_at),
                "last_received_at": _iso(study.last_received_at),
                "scored_at": _iso(study.scored_at), "delivered_at": _iso(study.delivered_at),
                "time_to_result_s": _seconds(study.last_received_at, study.scored_at),
                "instances": int(n or 0),
                "priority": result.priority if result else None,
                "flag": flag(result.priority, result.analysed) if result else None,
                "probability": result.probability if result else None,
                "abnormal": result.abnormal if result else None,
                "analysed": result.analysed if result else None,
                "study_type": result.study_type if result else None,
                "series_description": result.series_description if result else None,
            })
    return rows


def study_detail(db: Database, study_id: int) -> dict[str, Any]:
    """One study: its results (newest first) with their views, objects and deliveries; its
    instances; its audit events."""
    with db.session() as s:
        study = s.get(Study, study_id)
        if study is None:
            raise NotFound(f"no study {study_id}")
        results = []
        for r in sorted(study.results, key=lambda r: r.id, reverse=True):
            d = _result_dict(r)
            d["views"] = [{
                "id": sc.id, "instance_id": sc.instance_id,
                "sop_instance_uid": sc.instance.sop_instance_uid,
                "modality": sc.instance.modality, "probability": sc.probability,
                "error": sc.error, "heatmap": sc.heatmap is not None,
                "heatmap_method": sc.heatmap_method, "peak_box": sc.peak_box,
                "pixels_kept": bool(sc.instance.stored),
            } for sc in r.scores]
            d["outputs"] = [{"id": o.id, "kind": o.kind, "uid": o.uid, "path": o.path,
                             "detail": o.detail} for o in r.outputs]
            d["deliveries"] = [_delivery_dict(x) for x in r.deliveries]
            results.append(d)
        events = s.scalars(select(Event).where(Event.study_id == study_id)
                           .order_by(Event.at, Event.id)).all()
        return {
            "id": study.id, "study_instance_uid": study.study_instance_uid,
            "accession_number": study.accession_number, "state": study.state.value,
            "state_reason": study.state_reason, "calling_ae": study.calling_ae,
            "revision": study.revision,
            "first_received_at": _iso(study.first_received_at),
            "last_received_at": _iso(study.last_received_at),
            "completed_at": _iso(study.completed_at), "scored_at": _iso(study.scored_at),
            "delivered_at": _iso(study.delivered_at),
            "time_to_result_s": _seconds(study.last_received_at, study.scored_at),
            "instances": [{"id": i.id, "sop_instance_uid": i.sop_instance_uid,
                           "series_instance_uid": i.series_instance_uid, "modality": i.modality,
                           "size_bytes": i.size_bytes, "received_at": _iso(i.received_at),
                           "stored": bool(i.stored)} for i in study.instances],
            "current_result": next((r for r in results if not r["superseded"]), None),
            "results": results,
            "events": [{"at": _iso(e.at), "kind": e.kind.value, "detail": e.detail} for e in events],
        }


def view_score(db: Database, study_id: int, score_id: int) -> dict[str, Any]:
    """What drawing one view's heatmap needs: the stored file, heatmap, geometry, the result."""
    with db.session() as s:
        sc = s.get(ImageScore, score_id)
        if sc is None or sc.result.study_id != study_id:
            raise NotFound(f"study {study_id} has no view score {score_id}")
        r = sc.result
        summary = next((o.path for o in r.outputs if o.kind == "SC"), None)
        return {"path": sc.instance.path, "stored": bool(sc.instance.stored),
                "heatmap": sc.heatmap, "geometry": json.loads(sc.geometry) if sc.geometry else None,
                "probability": sc.probability, "error": sc.error, "peak_box": sc.peak_box,
                "sop_instance_uid": sc.instance.sop_instance_uid, "modality": sc.instance.modality,
                "number": [x.id for x in r.scores].index(sc.id) + 1,
                "result": _result_dict(r), "summary_path": summary}


def summary_path(db: Database, study_id: int) -> str | None:
    """The summary image (Secondary Capture) of the study's current result, if one was made."""
    cur = _current_results()
    with db.session() as s:
        return s.scalar(select(OutputObject.path)
                        .join(cur, cur.c.rid == OutputObject.result_id)
                        .where(cur.c.study_id == study_id, OutputObject.kind == "SC")
                        .order_by(OutputObject.id).limit(1))


def _delivery_dict(d: Delivery) -> dict[str, Any]:
    return {"id": d.id, "destination": d.destination, "object_kind": d.object_kind,
            "sop_instance_uid": d.sop_instance_uid, "priority": d.priority,
            "state": d.state.value, "attempts": d.attempts,
            "next_attempt_at": _iso(d.next_attempt_at), "last_error": d.last_error,
            "created_at": _iso(d.created_at), "delivered_at": _iso(d.delivered_at)}


def queue(db: Database, *, limit: int = 500) -> dict[str, list[dict[str, Any]]]:
    """Every pending or sending delivery once, most urgent first: in ``failing`` when it failed
    at least once (it has attempts and a last error), else in ``waiting``; ``dead``: deliveries
    given up on, newest first.

    (``failing`` used to be a subset of ``waiting``, and the queue page, which shows both
    tables, listed each failing delivery twice.)"""
    def rows(s, q) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
        out = []
        for d, study_id, uid, superseded in s.execute(q).all():
            row = _delivery_dict(d)
            row.update(study_id=study_id, study_instance_uid=uid, result_superseded=superseded)
            out.append(row)
        return out

    base = (select(Delivery, Study.id, Study.study_instance_uid, StudyResult.superseded)
            .join(StudyResult, StudyResult.id == Delivery.result_id)
            .join(Study, Study.id == StudyResult.study_id))
    with db.session() as s:
        queued = rows(s, base.where(Delivery.state.in_((DeliveryState.PENDING, DeliveryState.SENDING)))
                      .order_by(_DELIVERY_RANK, Delivery.next_attempt_at, Delivery.id).limit(limit))
        dead = rows(s, base.where(Delivery.state == DeliveryState.DEAD)
                    .order_by(Delivery.id.desc()).limit(limit))
    failing = [d for d in queued if _has_failed(d)]
    return {"failing": failing, "waiting": [d for d in queued if not _has_failed(d)], "dead": dead}


def _has_failed(delivery: dict[str, Any]) -> bool:
    return delivery["attempts"] > 0 and bool(delivery["last_error"])


def retry_delivery(db: Database, delivery_id: int, now: dt.datetime) -> dict[str, Any]:
    """Send a pending or dead delivery now (a dead one gets ``dispatch.max_attempts`` again); a
    study that its death failed goes back to dispatching. Recorded as an audit event."""
    with db.session() as s:
        d = s.get(Delivery, delivery_id, with_for_update=True)
        if d is None:
            raise NotFound(f"no delivery {delivery_id}")
        if d.state not in (DeliveryState.PENDING, DeliveryState.DEAD):
            raise RetryRefused(f"delivery {delivery_id} is {d.state.value}: only a pending or dead "
                               "delivery can be retried")
        result, study = d.result, d.result.study
        if result.superseded:
            raise RetryRefused(f"delivery {delivery_id} belongs to a result a newer one replaced; "
                               "the newer result's objects are sent instead")
        was = d.state
        detail = (f"{d.object_kind} {d.sop_instance_uid} to {d.destination}: retry requested from "
                  f"the dashboard (was {was.value} after {d.attempts} attempt(s))")
        d.state = DeliveryState.PENDING
        d.next_attempt_at = now
        if was == DeliveryState.DEAD:
            d.attempts = 0
            if study.state == StudyState.FAILED and result.study_revision == study.revision:
                study.state = StudyState.DISPATCHING
                study.state_reason = None
        # the audit trail has no kind of its own for an operator's retry: RECOVERED (work put
        # back in the queue), with the detail saying who and why
        s.add(Event(at=now, study_id=study.id, kind=EventKind.RECOVERED, detail=detail))
        return {**_delivery_dict(d), "study_id": study.id, "was": was.value}


def score_distribution(db: Database, now: dt.datetime, *, days: int = 14,
                       bins: int = 10) -> list[dict[str, Any]]:
    """Per UTC day, newest first: how many studies got a current result, how many could not be
    analysed, the mean and median probability, the share at or over the threshold and a
    histogram of probabilities (``bins`` equal bins over [0, 1])."""
    today = now.astimezone(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - dt.timedelta(days=days - 1)
    with db.session() as s:
        rows = s.execute(select(StudyResult.created_at, StudyResult.probability, StudyResult.abnormal)
                         .where(StudyResult.superseded.is_(False), StudyResult.created_at >= start)
                         ).all()
    per_day: dict[dt.date, list[tuple[float | None, bool | None]]] = {}
    for created, p, abnormal in rows:
        per_day.setdefault(created.astimezone(dt.timezone.utc).date(), []).append((p, abnormal))
    out = []
    for k in range(days):
        day = (today - dt.timedelta(days=k)).date()
        items = per_day.get(day, [])
        probs = sorted(p for p, _ in items if p is not None)
        hist = [0] * bins
        for p in probs:
            hist[min(bins - 1, int(math.floor(p * bins)))] += 1
        n = len(probs)
        out.append({
            "day": day.isoformat(), "studies": len(items), "not_analysed": len(items) - n,
            "mean": round(sum(probs) / n, 4) if n else None,
            "median": round((probs[(n - 1) // 2] + probs[n // 2]) / 2, 4) if n else None,
            "abnormal_share": round(sum(1 for _, a in items if a) / n, 4) if n else None,
            "histogram": hist,
        })
    return out


def counts(db: Database) -> dict[str, Any]:
    """Studies and deliveries by state, and the two queues: deliveries waiting to be sent and
    complete studies waiting to be scored (what /metrics exports, measured now)."""
    with db.session() as s:
        studies = {k.value: v for k, v in s.execute(
            select(Study.state, func.count()).group_by(Study.state)).all()}
        deliveries = {k.value: v for k, v in s.execute(
            select(Delivery.state, func.count()).group_by(Delivery.state)).all()}
        oldest = s.scalar(select(func.min(Delivery.created_at))
                          .where(Delivery.state == DeliveryState.PENDING))
    return {"studies": {st.value: studies.get(st.value, 0) for st in StudyState},
            "deliveries": {st.value: deliveries.get(st.value, 0) for st in DeliveryState},
            "oldest_pending_delivery": oldest}
