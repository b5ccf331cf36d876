"""Load (docs/reliability.md, promise 3): 8 concurrent associations of 100 images each, five
rounds, against ``radtriage serve`` with its default limits (16 associations).

No association is refused, every C-STORE is answered Success and stored, and the daemon's
resident memory (with its preparation workers) does not grow from round to round. To keep the
suite short nothing is scored here (completion waits an hour): what is loaded is the receiving
side, associations, fsyncs and commits. The crash test drives the scoring pipeline with four
concurrent senders; benchmarks/load.py runs these same rounds with every view scored by the demo
model and prints the figures.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from db import Database, Instance, Study, StudyResult, StudyState
from tests.conftest import write_study
from tests.senders import load_round

pytestmark = pytest.mark.integration

ASSOCIATIONS, IMAGES, ROUNDS = 8, 100, 5
#: allowed growth of resident memory from the second round to the last (the first warms caches,
#: the model's buffers and the allocator); a leak of 20 kB per instance would pass 60 MB
GROWTH_MB = 60


def test_eight_associations_of_one_hundred_images_five_rounds(make_daemon, small_checkpoint,
                                                             tmp_path, record_property):
    daemon = make_daemon(checkpoint=small_checkpoint, preprocessing={"size": 64},
                         completion={"release_grace_s": 3600, "stable_s": 86400},
                         logging={"level": "INFO", "file": "radtriage.log"}).start()
    db = Database(daemon.db_url)
    rounds = []
    try:
        for r in range(ROUNDS):
            studies = [write_study(tmp_path / f"r{r}" / f"a{a}", views=IMAGES, rows=64, columns=64,
                                   seed=100 * r + a) for a in range(ASSOCIATIONS)]
            expected = (r + 1) * ASSOCIATIONS * IMAGES

            def settled() -> bool:
                with db.session() as s:
                    return (s.scalar(select(func.count()).select_from(Instance)) or 0) >= expected

            result = load_round(daemon.port, daemon.proc.pid, studies, settled=settled)
            assert (result.refused, result.unanswered, result.failed) == (0, 0, 0), result
            assert result.succeeded == ASSOCIATIONS * IMAGES
            rounds.append(result)
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Instance)) == ROUNDS * ASSOCIATIONS * IMAGES
            assert s.scalar(select(func.count()).select_from(StudyResult)) == 0
            states = s.scalars(select(Study.state)).all()
            assert states == [StudyState.RECEIVING] * ROUNDS * ASSOCIATIONS
    finally:
        db.dispose()
    rss = [round(r.memory["rss"], 1) for r in rounds]
    record_property("load", {"instances_per_s": [round(r.per_second, 1) for r in rounds],
                             "rss_mb": rss, "peak_mb": rounds[-1].memory["peak"]})
    print(f"load: {[round(r.per_second) for r in rounds]} instances/s received per round, "
          f"resident memory after each round {rss} MB")
    assert rss[-1] - rss[1] < GROWTH_MB, rss
    assert daemon.stop() == 0
