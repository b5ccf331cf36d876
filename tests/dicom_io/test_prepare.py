"""dicom_io.prepare: views prepared in worker processes, every failure a reason, never a crash."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from dicom_io.bodypart import SelectionRules
from dicom_io.pixels import DecodeOptions, Preprocessing, prepare_frames
from dicom_io.prepare import PreparePool, prepare_view
from dicom_io.synthetic import StudySpec, make_instance
from tests.conftest import write_study
from tests.dicom_io.crashing import crash_on_marked_files, hang_on_marked_files, log_then_prepare

PREP, OPTS, RULES = Preprocessing(), DecodeOptions(), SelectionRules()


@pytest.fixture(scope="module")
def views(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("views")
    files = write_study(folder / "a", views=3, seed=1, rows=300, columns=240)
    files += write_study(folder / "b", views=2, seed=2, body_part="ELBOW", modality="DX")
    (folder / "junk.dcm").write_bytes(b"not DICOM at all" * 10)
    return files + [folder / "junk.dcm", folder / "missing.dcm"]


def test_prepare_view_gives_a_tensor_and_the_study_type(views: list[Path]) -> None:
    view = prepare_view(views[0], PREP, OPTS, RULES)
    assert view.error is None and view.study_type == "WRIST" and view.frames == 1
    assert view.tensor is not None and view.tensor.shape == (1, 3, 224, 224)
    assert np.array_equal(view.tensor, prepare_frames(views[0], PREP, OPTS))


def test_prepare_view_turns_failures_into_reasons(views: list[Path]) -> None:
    junk, missing = prepare_view(views[-2], PREP, OPTS, RULES), prepare_view(views[-1], PREP, OPTS, RULES)
    assert junk.tensor is None and "not a readable DICOM file" in junk.error
    assert missing.tensor is None and "cannot read the stored file" in missing.error


def test_prepare_view_applies_the_selection_rules(tmp_path: Path) -> None:
    ds = make_instance(StudySpec(views=1, body_part="KNEE"), 0)
    ds.StudyDescription = ds.SeriesDescription = "XR KNEE"
    path = tmp_path / "knee.dcm"
    ds.save_as(path, enforce_file_format=True)
    scored = prepare_view(path, PREP, OPTS, SelectionRules(unmapped_body_part="score"))
    assert scored.tensor is not None and scored.study_type is None
    refused = prepare_view(path, PREP, OPTS, SelectionRules(unmapped_body_part="not_analysed"))
    assert refused.tensor is None and "body part not supported" in refused.error


def test_worker_processes_give_what_the_calling_thread_gives(views: list[Path]) -> None:
    with PreparePool(PREP, OPTS, RULES, workers=1) as inline:
        expected = inline.map(views)
    with PreparePool(PREP, OPTS, RULES, workers=2) as pool:
        got = pool.map(views)
        again = pool.map(views[:2])  # the pool is kept between studies
    assert len(got) == len(views) and len(again) == 2
    for a, b in zip(expected, got):
        assert a.error == b.error and a.study_type == b.study_type
        assert (a.tensor is None) == (b.tensor is None)
        if a.tensor is not None:
            assert np.array_equal(a.tensor, b.tensor)
    assert [v.study_type for v in got[:5]] == ["WRIST"] * 3 + ["ELBOW"] * 2


def test_a_worker_that_dies_costs_only_its_view(views: list[Path], tmp_path: Path) -> None:
    crash = tmp_path / "crash.dcm"
    crash.write_bytes(views[0].read_bytes())
    paths = [views[0], crash, views[1]]
    with PreparePool(PREP, OPTS, RULES, workers=2) as pool:
        pool.task = crash_on_marked_files
        got = pool.map(paths)
        assert got[0].tensor is not None and got[2].tensor is not None
        assert got[1].tensor is None and "decoder crashed" in got[1].error
        after = pool.map(views[:2])  # a fresh pool serves the next study
    assert all(v.tensor is not None for v in after)


def test_a_hanging_decoder_times_out_and_its_workers_are_stopped(views: list[Path], tmp_path: Path) -> None:
    hang = tmp_path / "hang.dcm"
    hang.write_bytes(views[0].read_bytes())
    with PreparePool(PREP, OPTS, RULES, workers=2) as pool:
        pool.task = hang_on_marked_files
        assert all(v.tensor is not None for v in pool.map(views[:2]))  # workers are up
        processes = list(pool._executor._processes.values())
        got = pool.map([views[0], hang, views[1]], timeout_s=3)
        assert got[0].tensor is not None
        assert got[1].tensor is None and "timed out" in got[1].error
        assert got[2].tensor is None or got[2].error is None  # done in time, or timed out too
        assert all(not p.is_alive() for p in processes)  # the stuck worker is gone
        after = pool.map(views[:2], timeout_s=60)  # a fresh pool serves the next study
    assert all(v.tensor is not None for v in after)


def test_workers_log_as_the_daemon_does(views: list[Path], tmp_path: Path) -> None:
    """Only the spawned workers run ``setup_logging`` here: this process's logging is untouched."""
    from daemon.logs import setup_logging

    log_file = tmp_path / "radtriage.log"
    setup = functools.partial(setup_logging, "INFO", phi=False, file=log_file)
    with PreparePool(PREP, OPTS, RULES, workers=2, log_setup=setup) as pool:
        pool.task = log_then_prepare
        assert all(v.tensor is not None for v in pool.map(views[:2]))
    lines = log_file.read_text(encoding="utf-8").splitlines()
    assert any(f"WARNING dicom_io.prepare [study=-] preparing {views[0].name}" in line for line in lines)


def test_watch_parent_exits_once_the_parent_is_gone() -> None:
    """Issue 17, finding 18 (the pure part): the watch calls exit when getppid() changes."""
    import os
    import threading

    from dicom_io.prepare import watch_parent

    exited = threading.Event()
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        exited.set()

    watch_parent(os.getppid(), interval_s=0.01, exit=fake_exit)
    assert not exited.wait(0.2)  # our parent is alive: nothing happens
    watch_parent(-1, interval_s=0.01, exit=fake_exit)  # a parent that is not ours any more
    assert exited.wait(10) and codes == [1]
