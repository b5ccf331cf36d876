"""Class activation maps of a DenseNet with one output, in the forward pass that scores.

torchvision's DenseNet ends ``features -> ReLU -> global average pool -> Linear``. With ``A`` the
ReLU's output (N x C x h x w; 7 x 7 for a 224 px input) and ``w, b`` the linear head, the logit
is ``mean_xy(sum_c w_c A_c(x, y)) + b``. The class activation map (Zhou et al. 2016) is the sum
before the mean, ``CAM(x, y) = sum_c w_c A_c(x, y) + b``: exact, in logit units, and its mean
over the grid *is* the logit, so the heatmap and the score come from one pass and cannot
disagree. :func:`forward_with_cam` computes both.

Grad-CAM (Selvaraju et al. 2017; ``model.heatmap: gradcam``) weighs each channel by the mean
gradient of the logit with respect to it and keeps the positive part:
``ReLU(sum_c mean_xy(dlogit/dA_c) A_c)``. For this head the gradient is ``w_c / (h w)``, so
Grad-CAM is the CAM less its bias, scaled and clipped at zero; it is offered for heads that are
not a plain linear layer (an imported checkpoint with a deeper head) and because sites ask for
it by name. It needs a backward pass (about twice the work).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

HeatmapMethod = Literal["cam", "gradcam"]
HEATMAP_METHODS: tuple[str, ...] = ("cam", "gradcam")


def _parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    features, classifier = getattr(model, "features", None), getattr(model, "classifier", None)
    if features is None or classifier is None:
        raise TypeError(f"{type(model).__name__} has no features/classifier: not a torchvision DenseNet")
    return features, classifier


def forward_with_cam(model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits N, CAM N x h x w) in one pass; logits equal ``model(batch)``'s."""
    features, classifier = _parts(model)
    a = F.relu(features(batch))
    logits = classifier(torch.flatten(F.adaptive_avg_pool2d(a, (1, 1)), 1)).reshape(-1)
    if not isinstance(classifier, nn.Linear) or classifier.out_features != 1:
        raise TypeError("the exact CAM needs a linear head with one output; use gradcam")
    w = classifier.weight.reshape(-1).to(a.dtype)
    cam = torch.einsum("nchw,c->nhw", a, w) + classifier.bias.to(a.dtype)
    return logits, cam


def forward_with_gradcam(model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits N, Grad-CAM N x h x w); runs with gradients on, whatever the caller's mode."""
    features, classifier = _parts(model)
    with torch.inference_mode(False), torch.enable_grad():
        x = batch.clone() if batch.is_inference() else batch
        a = F.relu(features(x))
        if not a.requires_grad:  # frozen weights: ask for the gradient with respect to A itself
            a = a.detach().requires_grad_(True)
        logits = classifier(torch.flatten(F.adaptive_avg_pool2d(a, (1, 1)), 1)).reshape(-1)
        (grad,) = torch.autograd.grad(logits.sum(), a)
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * a).sum(dim=1))
    return logits.detach(), cam.detach()


def forward_with_heatmap(model: nn.Module, batch: torch.Tensor,
                         method: HeatmapMethod = "cam") -> tuple[torch.Tensor, torch.Tensor]:
    if method == "cam":
        return forward_with_cam(model, batch)
    if method == "gradcam":
        return forward_with_gradcam(model, batch)
    raise ValueError(f"unknown heatmap method {method!r}; one of {', '.join(HEATMAP_METHODS)}")
