"""BatchNorm of pretrained weights whose BN was folded into the convolutions, made trainable without losing them.

A converted export (``ldfsam.model.yolo_weights``) has each BatchNorm as the identity plus a bias, exact in eval
mode. In training mode BN normalises by the batch's statistics instead, which would throw the pretrained scale of
every channel away at the first step. Two remedies, chosen by ``DistillConfig.pretrained_bn`` (default frozen):

* ``reestimate_bn``: measure each BN input's per-channel mean and variance on training batches (eval mode, so every
  layer sees what the pretrained network computes), set them as the running statistics and compensate the affine
  parameters so the eval-mode map is unchanged. Training-mode BN then computes (up to batch-to-batch variation)
  what the pretrained network computes, and BN keeps adapting as usual.
* ``freeze_bn``: keep every BN in eval mode (running statistics fixed, affine parameters still trained), except
  the layers the pretrained weights do not cover (``fresh_batchnorms``: the class branch of another class count),
  which normalise as in any fresh network.
"""

from __future__ import annotations

from typing import Iterable, List, Tuple

import torch
from torch import nn


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> Tuple[int, int]:
    """Re-estimate every BatchNorm2d of ``model`` from ``batches`` (images B×3×H×W in [0, 1]) keeping the eval-mode
    function: with A = g / sqrt(v + eps), B = b - m A the old map A x + B, the new statistics (mu, s2) get
    g' = A sqrt(s2 + eps), b' = B + A mu. Returns (BN layers updated, images seen)."""
    layers: List[nn.BatchNorm2d] = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    sums = {id(m): [0.0, None, None] for m in layers}  # count, sum, sum of squares (float64, per channel)

    def hook(module: nn.Module, inputs, _output) -> None:
        x = inputs[0].detach().double()
        acc = sums[id(module)]
        acc[0] += x.numel() / x.shape[1]
        s, q = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
        acc[1] = s if acc[1] is None else acc[1] + s
        acc[2] = q if acc[2] is None else acc[2] + q

    was_training = model.training
    model.eval()
    handles = [m.register_forward_hook(hook) for m in layers]
    seen = 0
    try:
        for images in batches:
            model(images)
            seen += int(images.shape[0])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not seen:
        return 0, 0
    for m in layers:
        count, s, q = sums[id(m)]
        if s is None:
            continue
        mu = s / count
        var = (q / count - mu * mu).clamp_min(0.0) * (count / max(count - 1.0, 1.0))  # unbiased, as BN's running_var
        a = m.weight.double() / torch.sqrt(m.running_var.double() + m.eps)
        b = m.bias.double() - m.running_mean.double() * a
        m.weight.copy_((a * torch.sqrt(var + m.eps)).to(m.weight.dtype))
        m.bias.copy_((b + a * mu).to(m.bias.dtype))
        m.running_mean.copy_(mu.to(m.running_mean.dtype))
        m.running_var.copy_(var.to(m.running_var.dtype))
    return len(layers), seen


def freeze_bn(model: nn.Module, skip: Iterable[str] = ()) -> int:
    """Put every BatchNorm2d of ``model`` in eval mode (call after each ``model.train()``), except the modules
    named in ``skip``; returns how many were frozen."""
    skip = set(skip)
    n = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d) and name not in skip:
            m.eval()
            n += 1
    return n


def fresh_batchnorms(model: nn.Module, source: nn.Module) -> List[str]:
    """Names of ``model``'s BatchNorm2d layers that ``source`` cannot initialise (no tensor of that name and shape):
    freshly initialised layers, e.g. the class branch of another class count. Frozen, such a layer would never
    normalise (running mean 0, variance 1) and its branch would learn from unnormalised activations."""
    theirs = {k: v.shape for k, v in source.state_dict().items()}
    fresh = []
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            own = {f"{name}.{k}": v.shape for k, v in m.state_dict().items() if k != "num_batches_tracked"}
            if any(theirs.get(k) != shape for k, shape in own.items()):
                fresh.append(name)
    return fresh
