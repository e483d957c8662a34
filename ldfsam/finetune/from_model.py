"""Phase 2 starting from an installed LDFSAM model instead of from the pretrained SAM alone.

``ldfsam train --from MODEL`` improves a model on a handful of the user's cases: the new model is built with the
starting model's configuration, gets SAM's pretrained weights as usual, then every tensor of the starting model
except the prompt generator (which comes from this run's Phase 1, itself started from the model's prompt
generator): the feature prompt heads, SAM's prompt encoder and mask decoder, and the encoder's adapters where the
preset has them.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Union

import torch

from ..errors import CheckpointError

PROMPT_GENERATOR = "prompt_generator."


def load_starting_model(model: torch.nn.Module, path: Union[str, Path]) -> List[str]:
    """Copy the starting model's weights (all but its prompt generator) into ``model``; returns the names copied.

    Both models must be of one architecture: a tensor missing or of another shape is a CheckpointError naming the
    file.
    """
    from ..checkpoint import load_checkpoint, state_mismatch

    path = Path(path)
    parent = load_checkpoint(path).model.state_dict()
    own = model.state_dict()
    wanted = [k for k in own if not k.startswith(PROMPT_GENERATOR)]
    mismatch = state_mismatch({k: tuple(own[k].shape) for k in wanted}, {k: parent[k] for k in wanted if k in parent})
    if mismatch:
        raise CheckpointError(f"the starting model does not fit the model being trained ({mismatch})", path)
    with torch.no_grad():
        for k in wanted:
            own[k].copy_(parent[k].to(own[k].dtype))
    return wanted
