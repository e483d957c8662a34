"""The prompt generator: an ultralytics YOLOv8 DetectionModel whose P3/P4/P5 become LDFSAM's prompts.

Built from ultralytics' own ``yolov8{n,s,m,l,x}.yaml`` so Phase 1 (trained with ultralytics' trainer) and Phase 2
share one architecture and one state-dict layout. The Phase 1 result travels as a ``.safetensors`` file
(``save_prompt_generator`` / ``load_prompt_generator_weights``); an ultralytics ``.pt`` can be imported with an
explicit ``allow_pickle=True`` because such files are Python pickles that run code when loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from ..config import from_dict, to_dict
from ..errors import Arg, CheckpointError, ConfigError
from ..file_format import check_document, load_state, load_strict, save_state
from ..offline import import_ultralytics
from .config import PromptGeneratorConfig

FORMAT = "ldfsam-prompt-generator"
VERSION = 1
PathLike = Union[str, Path]


def build_detection_model(cfg: PromptGeneratorConfig, verbose: bool = False) -> nn.Module:
    """A fresh (randomly initialised) ultralytics DetectionModel ``yolov8{scale}`` with ``cfg.num_classes``."""
    import_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    if cfg.scale not in ("n", "s", "m", "l", "x"):
        raise ConfigError(f"prompt_generator.scale: {cfg.scale!r} is not one of n, s, m, l, x")
    if cfg.num_classes < 1:
        raise ConfigError(f"prompt_generator.num_classes: must be at least 1, got {cfg.num_classes}")
    return DetectionModel(f"yolov8{cfg.scale}.yaml", ch=3, nc=cfg.num_classes, verbose=verbose)


class PromptGenerator(nn.Module):
    """Wraps a DetectionModel: ``features`` stops before the Detect head; ``detect`` adds the head and NMS."""

    def __init__(self, cfg: PromptGeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.detector = build_detection_model(cfg)
        self.detector.eval()
        with torch.no_grad():
            feats = self.features(torch.zeros(1, 3, 64, 64))
        self.feature_channels: Tuple[int, ...] = tuple(int(f.shape[1]) for f in feats)

    @property
    def head(self) -> nn.Module:
        return self.detector.model[-1]

    def features(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Image B×3×Y×Y in [0, 1] -> (P3, P4, P5): the Detect head's inputs at strides 8, 16, 32."""
        outputs: List[Optional[torch.Tensor]] = []
        x = image
        layers = self.detector.model
        for layer in layers[:-1]:
            if layer.f != -1:
                x = outputs[layer.f] if isinstance(layer.f, int) else [x if j == -1 else outputs[j] for j in layer.f]
            x = layer(x)
            outputs.append(x if layer.i in self.detector.save else None)
        return tuple(outputs[j] if j != -1 else x for j in self.head.f)

    def _head_predictions(self, features: Tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The Detect head's decoded predictions B×(4+nc)×anchors (boxes xywh, class scores)."""
        head = self.head
        was_training = head.training
        head.eval()
        try:
            preds = head(list(features))
        finally:
            head.train(was_training)
        return preds[0] if isinstance(preds, (tuple, list)) else preds

    def detect_from_features(self, features: Tuple[torch.Tensor, ...], conf: float = 0.25, iou: float = 0.7,
                             max_det: int = 300) -> List[torch.Tensor]:
        """Run the Detect head and NMS on (P3, P4, P5): one N_i×6 (x0, y0, x1, y1, conf, cls) per image."""
        from ultralytics.utils.nms import non_max_suppression

        preds = self._head_predictions(features)
        return non_max_suppression(preds, conf_thres=conf, iou_thres=iou, max_det=max_det, nc=self.cfg.num_classes)

    def has_objects(self, features: Tuple[torch.Tensor, ...], conf: float = 0.25) -> torch.Tensor:
        """B bool: whether :meth:`detect_from_features` would return a box scoring above ``conf``, without NMS
        (which always keeps the best-scoring candidate, so the answer is whether any candidate scores above)."""
        head = self.head
        if getattr(head, "end2end", False) or getattr(head, "one2one_cv2", None) is not None:
            preds = self._head_predictions(features)
            return preds[:, 4:4 + self.cfg.num_classes].amax(dim=(1, 2)).float() > conf
        # Only the class branch decides: the box branch (3×3 convolutions at 64 channels on every level) is most of
        # the head's work, and the sigmoid is monotone, so the best score is the sigmoid of the best class logit:
        # the same answer exactly, in either precision.
        best = torch.stack([head.cv3[i](f).amax(dim=(1, 2, 3)) for i, f in enumerate(features)], 1).amax(1)
        return best.sigmoid().float() > conf

    def detect(self, image: torch.Tensor, conf: float = 0.25, iou: float = 0.7,
               max_det: int = 300) -> List[torch.Tensor]:
        """Image B×3×Y×Y in [0, 1] -> boxes per image in YOLO pixel coordinates (N_i×6)."""
        return self.detect_from_features(self.features(image), conf, iou, max_det)

    def load_weights(self, state_dict: Dict[str, torch.Tensor], source: PathLike) -> None:
        """Load a DetectionModel state dict, with a CheckpointError naming ``source`` on any mismatch."""
        load_strict(self.detector, state_dict, source,
                    what=f"a yolov8{self.cfg.scale} with {self.cfg.num_classes} class(es)")


def save_prompt_generator(path: PathLike, detection_model: nn.Module, cfg: PromptGeneratorConfig,
                          training: Optional[Dict[str, Any]] = None) -> None:
    """Write a DetectionModel's weights as an LDFSAM prompt-generator ``.safetensors`` file (atomically)."""
    model = getattr(detection_model, "detector", detection_model)  # a PromptGenerator or a bare DetectionModel
    tensors = {k: (v.detach().float() if v.is_floating_point() else v.detach()) for k, v in model.state_dict().items()}
    document = {"format": FORMAT, "version": VERSION, "config": to_dict(cfg), "training": training or {}}
    save_state(path, tensors, document)


def load_prompt_generator_weights(path: PathLike) -> Tuple[Dict[str, torch.Tensor], PromptGeneratorConfig,
                                                           Dict[str, Any]]:
    """Read a prompt-generator file: (DetectionModel state dict, its PromptGeneratorConfig, the JSON document)."""
    tensors, document = load_state(path)
    check_document(document, path, FORMAT, VERSION, "prompt generator")
    try:
        cfg = from_dict(PromptGeneratorConfig, document.get("config", {}), "config")
    except ConfigError as e:
        raise CheckpointError(f"bad prompt generator configuration: {e}", path) from None
    return tensors, cfg, document


def load_ultralytics_pt(path: PathLike, allow_pickle: bool = False) -> Tuple[Dict[str, torch.Tensor],
                                                                             PromptGeneratorConfig]:
    """Import weights from an ultralytics ``.pt``; the one loader of such files in the project.

    Tried in order: a plain state dict (``torch.load(weights_only=True)``); an ultralytics checkpoint holding a
    pickled model, read with ``weights_only=True`` against ultralytics' allow-list of its own and torch's model
    classes (no arbitrary code runs); and only with ``allow_pickle`` a free pickle, for files outside that list.
    Returns the DetectionModel state dict (float32) and a PromptGeneratorConfig read from the model.
    """
    from .torch_files import PickledClasses, load_weights_only

    path = Path(path)
    try:
        obj = load_weights_only(path)  # a damaged or foreign file ends here, whatever allow_pickle says
    except PickledClasses:
        obj = _load_pickled(path, allow_pickle)
    model = obj.get("ema") or obj.get("model") if isinstance(obj, dict) and ("ema" in obj or "model" in obj) else obj
    if isinstance(model, nn.Module):
        yaml = getattr(model, "yaml", {}) or {}
        scale = yaml.get("scale") or "n"
        nc = int(yaml.get("nc", getattr(model, "nc", 1)))
        state = {k: (v.float() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
        return state, PromptGeneratorConfig(scale=scale, num_classes=nc)
    if isinstance(model, dict) and all(isinstance(v, torch.Tensor) for v in model.values()):
        head_cls = [k for k in model if k.endswith("cv3.0.2.weight")]
        nc = int(model[head_cls[0]].shape[0]) if head_cls else 1
        widths = {16: "n", 32: "s", 48: "m", 64: "l", 80: "x"}
        first = model.get("model.0.conv.weight")
        scale = widths.get(int(first.shape[0]), "n") if first is not None else "n"
        return {k: v.float() if v.is_floating_point() else v for k, v in model.items()}, \
            PromptGeneratorConfig(scale=scale, num_classes=nc)
    raise CheckpointError("is not an ultralytics detection checkpoint (no model or state dict inside)", path)


def _load_pickled(path: Path, allow_pickle: bool) -> Any:
    """An ultralytics checkpoint holding a pickled model: weights-only against ultralytics' allow-list of its
    own classes, else (``allow_pickle``) a free unpickling."""
    import pickle

    if path.suffix == ".pt":  # ultralytics' loader takes nothing else
        import_ultralytics()
        from ultralytics.nn.tasks import torch_safe_load

        try:
            return torch_safe_load(str(path), safe_only=True)[0]
        except (TypeError, ModuleNotFoundError, pickle.UnpicklingError):  # classes outside ultralytics' list
            pass
    if not allow_pickle:
        raise CheckpointError("holds pickled Python objects outside ultralytics' list of safe model classes, which "
                              "could run code when loaded; pass {} only for a file you trust", path,
                              arguments=[Arg("allow_pickle", True)])
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError, pickle.UnpicklingError) as e:  # classes this Python lacks
        raise CheckpointError(f"cannot be read as an ultralytics checkpoint ({type(e).__name__}: {e})",
                              path) from None
