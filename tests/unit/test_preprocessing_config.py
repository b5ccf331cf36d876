"""The preprocessing, decoding, limits and scoring sections, and the model/config preprocessing check."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from daemon.cli import main
from daemon.config import ConfigError, parse_config
from daemon.service import StartupError, model_preprocessing
from daemon.worker import build_pool
from dicom_io.pixels import Preprocessing
from inference.model import ModelCard, build_model, save_checkpoint
from tests.conftest import write_study


def card(**preprocessing) -> ModelCard:  # type: ignore[no-untyped-def]
    return ModelCard(name="m", version="1", preprocessing=preprocessing)


def test_a_card_that_predates_crop_was_trained_without_it() -> None:
    """A card naming only the MURA basics (the seeds, radtriage before crop): served uncropped."""
    legacy = card(size=224, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    with pytest.raises(StartupError, match="crop: true vs false"):
        model_preprocessing(parse_config({}), legacy)
    prep = model_preprocessing(parse_config({"preprocessing": {"crop": False}}), legacy)
    assert prep == Preprocessing(crop=False)


def test_defaults_agree_with_a_new_card() -> None:
    assert model_preprocessing(parse_config({}), ModelCard(name="m", version="1")) == Preprocessing()


def test_the_card_supplies_mean_and_std() -> None:
    prep = model_preprocessing(parse_config({}), card(crop=True, mean=[0.5] * 3, std=[0.25] * 3))
    assert prep.mean == (0.5, 0.5, 0.5) and prep.std == (0.25, 0.25, 0.25)


def test_a_mismatch_names_every_setting_that_differs() -> None:
    config = parse_config({"preprocessing": {"crop": False, "size": 320}})
    with pytest.raises(StartupError) as info:
        model_preprocessing(config, card(crop=True, size=224, clahe=False))
    message = str(info.value)
    assert "preprocessing:" in message and "m 1" in message
    assert "size: 320 vs 224" in message and "crop: false vs true" in message
    assert "clahe" not in message


def test_a_card_trained_with_clahe_needs_clahe_in_the_config() -> None:
    trained = card(crop=True, clahe=True, clahe_clip_limit=3.0)
    with pytest.raises(StartupError, match="clahe: false vs true; clahe_clip_limit: 2 vs 3"):
        model_preprocessing(parse_config({}), trained)
    prep = model_preprocessing(parse_config({"preprocessing": {"clahe": True, "clahe_clip_limit": 3}}),
                               trained)
    assert prep.clahe and prep.clahe_clip_limit == 3.0


def test_a_card_with_unknown_preprocessing_is_refused() -> None:
    with pytest.raises(StartupError, match="unknown preprocessing keys in the model card: sharpen"):
        model_preprocessing(parse_config({}), card(sharpen=True))


@pytest.mark.parametrize(("data", "expected"), [
    ({"preprocessing": {"resize": "stretch"}}, "preprocessing.resize = 'stretch'"),
    ({"preprocessing": {"size": 16}}, "preprocessing.size = 16"),
    ({"decoding": {"multiframe": "first"}}, "decoding.multiframe = 'first'"),
    ({"decoding": {"working_size": -1}}, "decoding.working_size = -1"),
    ({"limits": {"max_pixels": 0}}, "limits.max_pixels = 0"),
    ({"scoring": {"unmapped_body_part": "skip"}}, "scoring.unmapped_body_part = 'skip'"),
    ({"scoring": {"body_parts": {"KNEE": ["knee"]}}}, "scoring.body_parts.KNEE"),
    ({"scoring": {"body_parts": {"WRIST": ["wrist"], "HAND": ["Wrist"]}}}, "scoring"),
    ({"scoring": {"modalities": []}}, "scoring.modalities"),
    ({"preprocessing": {"croop": True}}, "did you mean 'crop'"),
])
def test_bad_values_name_the_key(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert expected in str(info.value)


def test_scoring_rules_from_config_are_normalised() -> None:
    config = parse_config({"scoring": {"modalities": ["cr", " dx "], "body_parts": {"WRIST": ["carpus"]},
                                       "unmapped_body_part": "not_analysed"}})
    rules = config.scoring.rules()
    assert rules.modalities == ("CR", "DX")
    assert rules.unmapped_body_part == "not_analysed"
    assert dict(rules.body_parts) == {"WRIST": ("carpus",)}


def test_build_pool_carries_the_decoding_settings() -> None:
    config = parse_config({"decoding": {"working_size": 0, "reduced_decode": False, "multiframe": "frames",
                                        "workers": 1}, "limits": {"max_pixels": 1234}})
    pool = build_pool(config, Preprocessing())
    assert pool.workers == 1
    assert (pool.opts.working_size, pool.opts.reduced_decode, pool.opts.multiframe,
            pool.opts.max_pixels) == (0, False, "frames", 1234)


def test_score_refuses_a_model_trained_with_other_preprocessing(tmp_path: Path,
                                                                restore_logging: None) -> None:
    checkpoint = tmp_path / "letterboxed.pt"
    save_checkpoint(checkpoint, build_model("densenet121"),
                    ModelCard(name="boxed", version="2", arch="densenet121", trained=False,
                              preprocessing=Preprocessing(resize="letterbox").to_card()))
    config = tmp_path / "radtriage.yaml"
    config.write_text(yaml.safe_dump({"model": {"checkpoint": str(checkpoint), "device": "cpu",
                                                "allow_untrained": True}}), encoding="utf-8")
    files = write_study(tmp_path / "in", views=1)
    out, err = io.StringIO(), io.StringIO()
    code = main(["score", str(files[0]), "--config", str(config)], out=out, err=err)
    assert code == 1
    assert "resize: squash vs letterbox" in err.getvalue() and "boxed 2" in err.getvalue()
    assert out.getvalue() == ""
