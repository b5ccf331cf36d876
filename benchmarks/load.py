"""Load: 8 concurrent associations of 100 images each, repeated; throughput and memory.

    .venv/bin/python benchmarks/load.py [--rounds 5] [--associations 8] [--images 100]
                                        [--size 512] [--model models/radtriage-demo.pt]
                                        [--json PATH]

``radtriage serve`` runs with its default limits (16 associations, the default completion and
decoding settings, an SQLite database) and the given model, every view scored (summary image
and SR made, no destination). Each round sends ``--associations`` studies of ``--images`` CR
views (``--size`` square, 12 bits stored), each study with its own DCMTK ``storescu`` at the
same time, then waits until every study has its result. Printed per round:

* refused associations, failure statuses and instances without an answer (all must be 0);
* receive throughput: instances answered Success / seconds from the first storescu start to
  the last storescu exit;
* settle time: from then until the last result is committed (scoring, SR, summary);
* resident memory of the daemon with its preparation workers once the round has settled, and
  the daemon's own peak (VmHWM).

The verdict: no refusal, no error, and memory that does not grow: the daemon's peak resident
memory (VmHWM) after the last round within ``--growth-mb`` (default 60) of its peak after the
second (the first warms the caches, the model's buffers and the allocator), and resident memory
with the workers within the same of what it was after the third (a leak grows round after round;
the allocator may keep a heap it grew once, which then stays flat). Exit status 0 when the
verdict holds.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from db import Database, StudyResult  # noqa: E402
from tests.conftest import free_port, write_study  # noqa: E402
from tests.integration.conftest import Daemon  # noqa: E402
from tests.senders import load_round  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--associations", type=int, default=8)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "radtriage-demo.pt")
    ap.add_argument("--growth-mb", type=float, default=60)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="radtriage-load-") as tmp:
        work = Path(tmp)
        daemon = Daemon(work / "daemon", args.model.resolve(), free_port(),
                        logging={"level": "INFO", "file": "radtriage.log"})
        daemon.config["model"] = {"checkpoint": str(args.model.resolve()), "device": "cpu"}
        daemon.config["completion"] = {"release_grace_s": 2}
        daemon.config["dispatch"] = {}
        daemon.start()
        db = Database(daemon.db_url)
        rounds = []
        try:
            for r in range(args.rounds):
                studies = [write_study(work / "in" / f"r{r}" / f"a{a}", views=args.images,
                                       rows=args.size, columns=args.size, seed=1000 * r + a)
                           for a in range(args.associations)]
                expected = (r + 1) * args.associations

                def settled() -> bool:
                    with db.session() as s:
                        return (s.scalar(select(func.count()).select_from(StudyResult)) or 0) >= expected

                res = load_round(daemon.port, daemon.proc.pid, studies, settled=settled,
                                 timeout_s=3600)
                rounds.append(res)
                print(f"round {r + 1}: {res.succeeded}/{res.instances} Success, {res.failed} "
                      f"failed, {res.unanswered} unanswered, {res.refused} association(s) refused; "
                      f"received in {res.receive_s:.1f} s ({res.per_second:.1f} instances/s), "
                      f"settled {res.settle_s:.1f} s later; resident {res.memory['rss']:.0f} MB "
                      f"(daemon {res.memory['own_rss']:.0f} MB, peak {res.memory['peak']:.0f} MB)",
                      flush=True)
                for p in (work / "in" / f"r{r}").rglob("*.dcm"):
                    p.unlink()
        finally:
            db.dispose()
            rc = daemon.stop()
    rss = [r.memory["rss"] for r in rounds]
    peaks = [r.memory["peak"] for r in rounds]
    errors = sum(r.failed + r.unanswered + r.refused for r in rounds)
    peak_growth = peaks[-1] - peaks[min(1, len(peaks) - 1)]
    growth = rss[-1] - rss[min(2, len(rss) - 1)]
    ok = errors == 0 and max(growth, peak_growth) < args.growth_mb and rc == 0
    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{len(__import__('os').sched_getaffinity(0))} CPU(s); model {args.model.name}; "
          f"{args.associations} x {args.images} images of {args.size}x{args.size} per round")
    print(f"verdict: {'PASS' if ok else 'FAIL'}: {errors} error(s); resident memory "
          f"{' -> '.join(f'{m:.0f}' for m in rss)} MB ({growth:+.1f} MB after round 3); daemon "
          f"peak {' -> '.join(f'{m:.0f}' for m in peaks)} MB ({peak_growth:+.1f} MB after round "
          f"2); limit {args.growth_mb:g} MB; daemon exit {rc}")
    if args.json:
        args.json.write_text(json.dumps({"rounds": [r.__dict__ for r in rounds], "growth_mb": growth,
                                         "peak_growth_mb": peak_growth, "ok": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
