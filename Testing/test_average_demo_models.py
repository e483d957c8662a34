"""scripts/average_demo_models.py: two models of one network averaged tensor by tensor, other networks refused."""

from __future__ import annotations

import pytest
import torch
from _scripts import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("scripts/average_demo_models.py")


def test_the_average_lies_between_the_parents(script, tmp_path):
    from _infer_helpers import save_tiny_model, tiny_model_config

    from ldfsam.checkpoint import load_checkpoint

    a = save_tiny_model(tmp_path / "a.safetensors", seed=1)
    b = save_tiny_model(tmp_path / "b.safetensors", seed=2)
    model, cfg, _, differing = script.average(a, b, 0.7)
    first = load_checkpoint(a)
    sa, sb = first.model.state_dict(), load_checkpoint(b).model.state_dict()
    assert differing > 10
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.3 * sa[key] + 0.7 * sb[key], atol=1e-6), key
        else:
            assert torch.equal(value, sa[key]), key
    assert cfg == first.model_cfg

    other_cfg = tiny_model_config()
    other_cfg.feature_prompts.mix_channels = 16
    other = save_tiny_model(tmp_path / "other.safetensors", other_cfg)
    with pytest.raises(SystemExit, match="different configurations"):
        script.average(a, other, 0.5)
    with pytest.raises(SystemExit, match="between 0 and 1"):
        script.average(a, b, 1.5)
