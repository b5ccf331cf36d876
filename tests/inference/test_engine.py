"""The inference engine: dynamic batching across studies, a bounded queue, urgent first with
ageing, failures kept to their batch; and the scorer under it: batching does not change a
score, out-of-memory halves the batch, a compile that fails falls back to eager.

Timing never decides a result here: where the engine must see several submissions at once, the
model is held on a gate while they queue.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from inference.engine import EngineClosed, InferenceEngine
from tests.fakes import FixedScorer

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]


class GatedScorer(FixedScorer):
    """Scores a view as its first pixel (so tests can tell views apart), records every batch's
    views, and holds each batch until ``gate`` is set (set by default)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.batches: list[list[float]] = []

    def score(self, views):  # type: ignore[no-untyped-def]
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        self.calls.append(len(views))
        ids = [float(v.flat[0]) for v in views]
        self.batches.append(ids)
        return ids


def view(value: float) -> np.ndarray:
    return np.full((3, 4, 4), value, np.float32)


@pytest.fixture
def gated():  # type: ignore[no-untyped-def]
    scorer = GatedScorer(0.0)
    engines: list[InferenceEngine] = []

    def make(**kwargs) -> InferenceEngine:  # type: ignore[no-untyped-def]
        engine = InferenceEngine(scorer, **kwargs).start()
        engines.append(engine)
        return engine

    yield scorer, make
    scorer.gate.set()
    for e in engines:
        e.close()


def hold_first_batch(scorer: GatedScorer, engine: InferenceEngine) -> list:
    """Put one view in the model and keep it there until the gate opens."""
    scorer.gate.clear()
    first = engine.submit([view(0.5)])
    assert scorer.entered.wait(30)
    return first


def test_views_of_different_studies_share_a_batch(gated) -> None:  # type: ignore[no-untyped-def]
    scorer, make = gated
    engine = make(batch_size=8, max_wait_ms=0)
    first = hold_first_batch(scorer, engine)
    a = engine.submit([view(0.1), view(0.2), view(0.3)])  # study A, 3 views
    b = engine.submit([view(0.6), view(0.7)])             # study B, 2 views
    scorer.gate.set()
    assert [f.result(30) for f in first] == [(0.5, None)]
    assert [f.result(30)[0] for f in a] == pytest.approx([0.1, 0.2, 0.3])
    assert [f.result(30)[0] for f in b] == pytest.approx([0.6, 0.7])
    assert scorer.calls == [1, 5]  # both studies in one forward pass


def test_a_batch_never_exceeds_batch_size(gated) -> None:  # type: ignore[no-untyped-def]
    scorer, make = gated
    engine = make(batch_size=4, max_wait_ms=0, queue_views=64)
    hold_first_batch(scorer, engine)
    futures = engine.submit([view(i / 100) for i in range(10)])
    scorer.gate.set()
    assert [f.result(30)[0] for f in futures] == pytest.approx([i / 100 for i in range(10)])
    assert scorer.calls == [1, 4, 4, 2]


def test_a_short_wait_fills_a_batch_from_views_that_arrive_during_it(gated) -> None:  # type: ignore[no-untyped-def]
    scorer, make = gated
    engine = make(batch_size=4, max_wait_ms=30_000)  # waits for a full batch: 4 views
    futures = engine.submit([view(0.1)])
    time.sleep(0.05)
    futures += engine.submit([view(0.2), view(0.3), view(0.4)])
    assert [f.result(30)[0] for f in futures] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert scorer.calls == [4]


def test_a_full_queue_makes_the_producer_wait(gated) -> None:  # type: ignore[no-untyped-def]
    """Back-pressure: with room for 4 views, a study of 10 cannot queue them all while the
    model is busy; it waits (holding its views) and goes on as the model frees room."""
    scorer, make = gated
    engine = make(batch_size=4, max_wait_ms=0, queue_views=4)
    hold_first_batch(scorer, engine)
    done = threading.Event()
    out: list = []

    def producer() -> None:
        out.extend(engine.submit([view(i / 100) for i in range(10)]))
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    time.sleep(0.2)
    assert not done.is_set()            # blocked: the queue is full
    assert engine.queued == 4           # and it holds no more than its bound
    scorer.gate.set()
    t.join(30)
    assert [f.result(30)[0] for f in out] == pytest.approx([i / 100 for i in range(10)])
    assert engine.stats.max_queued == 4


def test_a_producer_that_waits_too_long_for_room_gets_timeouts(gated) -> None:  # type: ignore[no-untyped-def]
    scorer, make = gated
    engine = make(batch_size=2, max_wait_ms=0, queue_views=2)
    hold_first_batch(scorer, engine)
    futures = engine.submit([view(0.1)] * 3, timeout_s=0.05)
    with pytest.raises(TimeoutError, match="queue stayed full"):
        futures[2].result(0)
    scorer.gate.set()
    assert [f.result(30)[0] for f in futures[:2]] == pytest.approx([0.1, 0.1])


def test_urgent_views_overtake_routine_ones(gated) -> None:  # type: ignore[no-untyped-def]
    scorer, make = gated
    engine = make(batch_size=2, max_wait_ms=0, aging_s=3600)
    hold_first_batch(scorer, engine)
    routine = engine.submit([view(0.1), view(0.2), view(0.3)], rank=1)
    urgent = engine.submit([view(0.8), view(0.9)], rank=0)
    scorer.gate.set()
    for f in routine + urgent:
        f.result(30)
    assert scorer.batches == [[0.5], pytest.approx([0.8, 0.9]), pytest.approx([0.1, 0.2]),
                              pytest.approx([0.3])]


def test_a_routine_view_that_waited_longer_than_aging_goes_before_new_urgent_ones(gated) -> None:  # type: ignore[no-untyped-def]
    scorer, make = gated
    engine = make(batch_size=1, max_wait_ms=0, aging_s=0.05)
    hold_first_batch(scorer, engine)
    old = engine.submit([view(0.1)], rank=1)
    time.sleep(0.1)  # more than aging_s: its deadline has passed any new urgent view's
    urgent = engine.submit([view(0.8), view(0.9)], rank=0)
    scorer.gate.set()
    for f in old + urgent:
        f.result(30)
    assert scorer.batches == [[0.5], pytest.approx([0.1]), pytest.approx([0.8]), pytest.approx([0.9])]


def test_a_model_error_fails_its_batch_only(gated) -> None:  # type: ignore[no-untyped-def]
    scorer, make = gated

    class Breaks(GatedScorer):
        def score(self, views):  # type: ignore[no-untyped-def]
            if any(float(v.flat[0]) < 0 for v in views):
                raise RuntimeError("kernel failed")
            return super().score(views)

    engine = InferenceEngine(Breaks(0.0), batch_size=4, max_wait_ms=0).start()
    try:
        bad = engine.submit([view(-1.0)])
        with pytest.raises(RuntimeError, match="kernel failed"):
            bad[0].result(30)
        good = engine.submit([view(0.4)])
        assert good[0].result(30)[0] == pytest.approx(0.4)
    finally:
        engine.close()


def test_a_cancelled_view_never_reaches_the_model(gated) -> None:  # type: ignore[no-untyped-def]
    scorer, make = gated
    engine = make(batch_size=4, max_wait_ms=0)
    hold_first_batch(scorer, engine)
    futures = engine.submit([view(0.1), view(0.2)])
    assert futures[1].cancel()  # the study gave up on it (timed out) while it was queued
    scorer.gate.set()
    assert futures[0].result(30)[0] == pytest.approx(0.1)
    engine.close()
    assert scorer.batches[1:] == [pytest.approx([0.1])]


def test_close_finishes_what_is_queued_and_refuses_more(gated) -> None:  # type: ignore[no-untyped-def]
    scorer, make = gated
    engine = make(batch_size=2, max_wait_ms=0)
    hold_first_batch(scorer, engine)
    queued = engine.submit([view(0.1), view(0.2), view(0.3)])
    closer = threading.Thread(target=engine.close)
    closer.start()
    scorer.gate.set()
    closer.join(30)
    assert [f.result(0)[0] for f in queued] == pytest.approx([0.1, 0.2, 0.3])
    late = InferenceEngine(scorer)
    late._closing = True  # as after close(): submit must not queue
    late._thread = threading.current_thread()
    with pytest.raises(EngineClosed):
        late.submit([view(0.1)])[0].result(0)


def test_a_backend_without_heatmaps_scores_views_asked_with_one(gated) -> None:  # type: ignore[no-untyped-def]
    scorer, make = gated
    engine = make(batch_size=2, max_wait_ms=0)
    assert engine.score_with_heatmaps([view(0.3)], "cam") == [(pytest.approx(0.3), None)]


# -- the torch scorer under the engine ----------------------------------------------------------


def _views(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((3, size, size)).astype(np.float32) for _ in range(n)]


def _scorer(path: Path, **kwargs):  # type: ignore[no-untyped-def]
    from inference.model import Scorer, load_checkpoint

    model, card = load_checkpoint(path, allow_untrained=True)
    return Scorer(model, card, device=torch.device("cpu"), **kwargs)


def test_a_score_does_not_change_with_batching(small_checkpoint) -> None:  # type: ignore[no-untyped-def]
    scorer = _scorer(small_checkpoint, batch_size=8)
    views = _views(8, scorer.card.input_size)
    alone = [scorer.score_with_heatmaps([v])[0] for v in views]
    together = scorer.score_with_heatmaps(views)
    for (p1, m1), (p8, m8) in zip(alone, together):
        assert abs(p1 - p8) < 1e-3
        np.testing.assert_allclose(m1, m8, atol=1e-3)
    engine = InferenceEngine(scorer, max_wait_ms=50).start()
    try:
        futures = [engine.submit([v], heatmap="cam") for v in views]  # one "study" per view
        through_engine = [f[0].result(60)[0] for f in futures]
    finally:
        engine.close()
    assert max(abs(a[0] - b) for a, b in zip(alone, through_engine)) < 1e-3


def test_the_demo_model_scores_a_view_alike_alone_and_in_a_batch_of_eight() -> None:
    """The issue's invariance, on the model the daemon serves by default (224 px, DenseNet-169)."""
    scorer = _scorer(ROOT / "models" / "radtriage-demo.pt", batch_size=8)
    views = _views(8, 224, seed=1)
    alone = [scorer.score([v])[0] for v in views]
    together = scorer.score(views)
    assert max(abs(a - b) for a, b in zip(alone, together)) < 1e-3


def test_out_of_memory_halves_the_batch_and_the_work_goes_on(small_checkpoint) -> None:  # type: ignore[no-untyped-def]
    scorer = _scorer(small_checkpoint, batch_size=8)
    views = _views(11, scorer.card.input_size)
    expected = scorer.score(views)
    real = scorer.model.forward
    seen: list[int] = []

    def tight(batch):  # type: ignore[no-untyped-def]
        seen.append(batch.shape[0])
        if batch.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(batch)

    scorer.model.forward = tight
    assert scorer.score(views) == pytest.approx(expected, abs=1e-5)
    assert scorer.fits == 2
    assert seen[:3] == [8, 4, 2] and max(seen[3:]) == 2

    def never(batch):  # type: ignore[no-untyped-def]
        raise torch.OutOfMemoryError("CUDA out of memory")

    scorer.model.forward = never
    with pytest.raises(torch.OutOfMemoryError):  # one view that does not fit is an error
        scorer.score(views[:1])


def test_a_compile_that_fails_falls_back_to_eager(small_checkpoint, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    class Uncompilable(torch.nn.Module):
        def __init__(self, inner):  # type: ignore[no-untyped-def]
            super().__init__()
            self.inner = inner

        def forward(self, x):  # type: ignore[no-untyped-def]
            raise RuntimeError("Compiler: cc not found")

    modes: list[str] = []

    def fake_compile(module, mode=None, dynamic=None):  # type: ignore[no-untyped-def]
        modes.append(mode)
        return Uncompilable(module)

    eager = _scorer(small_checkpoint, batch_size=4)
    views = _views(3, eager.card.input_size)
    expected = eager.score(views)
    monkeypatch.setattr(torch, "compile", fake_compile)
    scorer = _scorer(small_checkpoint, batch_size=4, compile="max-autotune")
    assert scorer.compile_mode == "max-autotune" and modes == ["max-autotune"]
    scorer.warm_up()
    assert scorer.compile_mode is None
    assert "serving the model eager" in caplog.text and "cc not found" in caplog.text
    assert scorer.score(views) == pytest.approx(expected, abs=1e-6)


def test_a_compiled_model_pads_batches_to_warmed_up_shapes(small_checkpoint, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    shapes: list[int] = []

    def recording_compile(module, mode=None, dynamic=None):  # type: ignore[no-untyped-def]
        class Recording(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = module

            def forward(self, x):  # type: ignore[no-untyped-def]
                shapes.append(x.shape[0])
                return self.inner(x)
        return Recording()

    eager = _scorer(small_checkpoint, batch_size=8)
    views = _views(5, eager.card.input_size)
    expected = eager.score(views)
    monkeypatch.setattr(torch, "compile", recording_compile)
    scorer = _scorer(small_checkpoint, batch_size=8, compile="default")
    scorer.warm_up()
    assert sorted(set(shapes)) == [1, 2, 4, 8]   # every shape it will see, compiled at start
    shapes.clear()
    assert scorer.score(views) == pytest.approx(expected, abs=1e-5)  # 5 views padded to 8
    assert shapes == [8]


def test_precision_and_compile_choices() -> None:
    from inference.model import resolve_compile, resolve_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) is None and resolve_precision("fp32", cuda) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    assert resolve_precision("fp16", cuda) is torch.float16
    assert resolve_compile("auto", cpu) is None and resolve_compile("auto", cuda) == "default"
    assert resolve_compile("off", cuda) is None
    assert resolve_compile("reduce-overhead", cpu) == "reduce-overhead"
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("int8", cpu)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_bf16_scores_agree_with_the_cpu(small_checkpoint) -> None:  # type: ignore[no-untyped-def]
    from inference.model import Scorer, load_checkpoint

    views = _views(16, 64)
    model, card = load_checkpoint(small_checkpoint, allow_untrained=True)
    cpu = Scorer(model, card, device=torch.device("cpu"), batch_size=16).score(views)
    model, card = load_checkpoint(small_checkpoint, allow_untrained=True)
    gpu = Scorer(model, card, device=torch.device("cuda"), batch_size=16, precision="auto")
    assert gpu.precision in ("bf16", "fp16")
    gpu.warm_up()
    assert gpu.score(views) == pytest.approx(cpu, abs=2e-2)
    one = [gpu.score([v])[0] for v in views[:4]]
    assert one == pytest.approx(gpu.score(views[:4]), abs=1e-2)


def test_a_factory_makes_the_backend_in_the_engine_thread_and_its_error_reaches_start() -> None:
    made_in: list[str] = []

    def make() -> GatedScorer:
        made_in.append(threading.current_thread().name)
        return GatedScorer(0.0)

    engine = InferenceEngine(factory=make, max_wait_ms=0)
    with pytest.raises(RuntimeError, match="call start"):
        engine.card
    engine.start()
    try:
        assert made_in == ["radtriage-inference"]
        assert engine.card.name == "fixed-test" and engine.batch_size == 16
        assert engine.score([view(0.25)]) == [pytest.approx(0.25)]
    finally:
        engine.close()

    def broken() -> GatedScorer:
        raise ValueError("model.checkpoint: no such file")

    with pytest.raises(ValueError, match="no such file"):
        InferenceEngine(factory=broken).start()
    with pytest.raises(ValueError, match="a backend or a factory"):
        InferenceEngine()
