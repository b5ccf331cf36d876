"""inference.cam: the heatmap comes from the pass that scores, and means what it says."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from inference.cam import forward_with_cam, forward_with_gradcam, forward_with_heatmap  # noqa: E402
from inference.model import ModelCard, Scorer, build_model  # noqa: E402


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return build_model("densenet121").eval()


def test_cam_logits_are_the_models_and_its_mean_is_the_logit(model) -> None:  # type: ignore[no-untyped-def]
    x = torch.randn(3, 3, 96, 96)
    with torch.inference_mode():
        logits, cam = forward_with_cam(model, x)
        ref = model(x).reshape(-1)
    assert cam.shape == (3, 3, 3)
    torch.testing.assert_close(logits, ref)
    torch.testing.assert_close(cam.mean(dim=(1, 2)), ref, atol=1e-5, rtol=1e-5)


def test_gradcam_is_the_positive_cam_without_bias_for_a_linear_head(model) -> None:  # type: ignore[no-untyped-def]
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        _, cam = forward_with_cam(model, x)
        logits, grad_cam = forward_with_gradcam(model, x)
        ref = model(x).reshape(-1)
    torch.testing.assert_close(logits, ref)
    hw = cam.shape[1] * cam.shape[2]
    expected = torch.relu(cam - model.classifier.bias) / hw
    torch.testing.assert_close(grad_cam, expected, atol=1e-6, rtol=1e-4)
    assert not any(p.grad is not None for p in model.parameters())  # scoring leaves no gradients


def test_cam_finds_what_drives_the_score() -> None:
    """A head that reads one channel: the CAM peaks where that channel's input is."""
    torch.manual_seed(0)
    m = build_model("densenet121").eval()
    x = torch.zeros(1, 3, 224, 224)
    x[:, :, 160:224, 0:64] = 3.0  # a bright patch bottom left
    with torch.inference_mode():
        a = torch.relu(m.features(x))
        diff = (a[0, :, 5:, :2].mean(dim=(1, 2)) - a[0, :, :2, 5:].mean(dim=(1, 2)))
        m.classifier.weight.copy_(diff.reshape(1, -1))  # weigh what the patch lights up
        m.classifier.bias.zero_()
        _, cam = forward_with_cam(m, x)
    y, xx = np.unravel_index(int(cam[0].argmax()), cam[0].shape)
    assert y >= 4 and xx <= 2


def test_scorer_gives_the_same_probability_with_and_without_heatmaps(model) -> None:  # type: ignore[no-untyped-def]
    card = ModelCard(name="t", version="1", arch="densenet121", trained=False)
    scorer = Scorer(model, card, device=torch.device("cpu"), batch_size=2)
    views = [np.random.default_rng(i).normal(size=(3, 64, 64)).astype(np.float32) for i in range(3)]
    plain = scorer.score(views)
    for method in ("cam", "gradcam"):
        pairs = scorer.score_with_heatmaps(views, method)
        assert [p for p, _ in pairs] == pytest.approx(plain, abs=1e-6)
        assert all(m.shape == (2, 2) and m.dtype == np.float32 for _, m in pairs)
    with pytest.raises(ValueError, match="unknown heatmap method"):
        forward_with_heatmap(model, torch.zeros(1, 3, 64, 64), "saliency")  # type: ignore[arg-type]
