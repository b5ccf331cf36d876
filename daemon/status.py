"""``radtriage status``: what the database says, as plain text for a terminal."""

from __future__ import annotations

from sqlalchemy import func, select

from db import Database, Delivery, DeliveryState, Study, StudyResult


def render_status(db: Database, *, limit: int = 20) -> str:
    lines: list[str] = []
    with db.session() as s:
        by_state = dict(s.execute(select(Study.state, func.count()).group_by(Study.state)).all())
        lines.append("studies: " + (", ".join(f"{k.value} {v}" for k, v in sorted(
            by_state.items(), key=lambda kv: kv[0].value)) or "none"))
        dstate = dict(s.execute(select(Delivery.state, func.count()).group_by(Delivery.state)).all())
        lines.append("deliveries: " + (", ".join(f"{k.value} {v}" for k, v in sorted(
            dstate.items(), key=lambda kv: kv[0].value)) or "none"))
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
    return "\n".join(lines) + "\n"
