"""inference.model: checkpoints (card travels with weights, errors name the path) and the Scorer.

torch is slow to build DenseNets, so these tests share one loaded model per module.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dicom_io.pixels import prepare_file  # noqa: E402
from dicom_io.synthetic import StudySpec, make_study  # noqa: E402
from inference.errors import CheckpointError, UntrainedModelError  # noqa: E402
from inference.model import (  # noqa: E402
    FORMAT,
    ModelCard,
    Scorer,
    build_model,
    load_checkpoint,
    save_checkpoint,
    select_device,
)


@pytest.fixture(scope="module")
def loaded(untrained_checkpoint: Path):  # type: ignore[no-untyped-def]
    return load_checkpoint(untrained_checkpoint, allow_untrained=True)


@pytest.fixture(scope="module")
def blob(untrained_checkpoint: Path) -> dict:
    return torch.load(untrained_checkpoint, map_location="cpu", weights_only=True)


def test_checkpoint_is_a_plain_dict(blob: dict) -> None:
    assert blob["format"] == FORMAT
    assert blob["arch"] == "densenet169"
    assert blob["card"]["name"] == "plumbing-test" and blob["card"]["trained"] is False


def test_load_keeps_card_and_weights(loaded, blob: dict) -> None:  # type: ignore[no-untyped-def]
    model, card = loaded
    assert card == ModelCard(name="plumbing-test", version="0.0.1", trained=False,
                             description="random weights, for plumbing tests only")
    assert card.display_name == "plumbing-test (UNTRAINED)"
    assert not model.training
    state = model.state_dict()
    assert state.keys() == blob["state_dict"].keys()
    for k, v in blob["state_dict"].items():
        assert torch.equal(state[k].cpu(), v), k


def test_save_load_round_trip(loaded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, card = loaded
    card2 = dataclasses.replace(card, name="round-trip", version="2.0", trained=True,
                                preprocessing={"size": 320, "mean": [0.5] * 3, "std": [0.25] * 3})
    path = tmp_path / "sub" / "rt.pt"
    save_checkpoint(path, model, card2)
    model2, got = load_checkpoint(path)  # trained: no need to allow anything
    assert got == card2
    a, b = model.state_dict(), model2.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k].cpu(), b[k]) for k in a)


def test_untrained_is_refused_by_default(untrained_checkpoint: Path) -> None:
    with pytest.raises(UntrainedModelError) as info:
        load_checkpoint(untrained_checkpoint)
    assert str(untrained_checkpoint) in str(info.value)
    assert "never trained" in str(info.value) and "allow_untrained" in str(info.value)
    assert isinstance(info.value, CheckpointError)


def _missing(tmp_path: Path, blob: dict) -> Path:
    return tmp_path / "nope.pt"


def _garbage(tmp_path: Path, blob: dict) -> Path:
    p = tmp_path / "garbage.pt"
    p.write_bytes(b"this is not a torch file\x00\x01" * 50)
    return p


def _wrong_format(tmp_path: Path, blob: dict) -> Path:
    p = tmp_path / "wrong_format.pt"
    torch.save({**blob, "format": "someone-else/1"}, p)
    return p


def _not_a_dict(tmp_path: Path, blob: dict) -> Path:
    p = tmp_path / "list.pt"
    torch.save([1, 2, 3], p)
    return p


def _bare_state_dict(tmp_path: Path, blob: dict) -> Path:
    p = tmp_path / "bare.pt"
    torch.save(blob["state_dict"], p)
    return p


def _bad_card(tmp_path: Path, blob: dict) -> Path:
    p = tmp_path / "bad_card.pt"
    torch.save({**blob, "card": {"nme": "typo", "version": "1"}}, p)
    return p


def _other_arch(tmp_path: Path, blob: dict) -> Path:
    p = tmp_path / "other_arch.pt"
    state = {k: v for k, v in build_model("densenet121").state_dict().items()}
    torch.save({**blob, "card": {**blob["card"], "trained": True}, "state_dict": state}, p)
    return p


def _unknown_arch(tmp_path: Path, blob: dict) -> Path:
    p = tmp_path / "unknown_arch.pt"
    torch.save({**blob, "arch": "resnet50", "card": {**blob["card"], "arch": "resnet50", "trained": True}}, p)
    return p


@pytest.mark.parametrize("make", [_missing, _garbage, _wrong_format, _not_a_dict, _bare_state_dict,
                                  _bad_card, _other_arch, _unknown_arch],
                         ids=lambda f: f.__name__.strip("_"))
def test_bad_checkpoints_name_the_path(make, tmp_path: Path, blob: dict) -> None:  # type: ignore[no-untyped-def]
    path = make(tmp_path, blob)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, allow_untrained=True)
    assert not isinstance(info.value, UntrainedModelError)
    assert str(path) in str(info.value)


def test_select_device_cpu() -> None:
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


# -- Scorer ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def views(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    folder = tmp_path_factory.mktemp("views")
    out = []
    for i, ds in enumerate(make_study(StudySpec(views=4, seed=11))):
        p = folder / f"v{i}.dcm"
        ds.save_as(p, enforce_file_format=True)
        out.append(prepare_file(p))
    return out


def test_scorer_probabilities_and_batch_independence(loaded, views: list[np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    model, card = loaded
    scorer = Scorer(model, card, device=torch.device("cpu"), batch_size=3)  # 4 views: 2 batches
    batch = scorer.score(views)
    assert len(batch) == 4
    assert all(isinstance(p, float) and 0.0 <= p <= 1.0 for p in batch)
    alone = [scorer.score([v])[0] for v in views]
    assert np.allclose(alone, batch, atol=1e-4, rtol=0)
    # the order of the output follows the input
    reversed_ = scorer.score(views[::-1])
    assert np.allclose(reversed_[::-1], batch, atol=1e-4, rtol=0)
    assert scorer.score([]) == []
