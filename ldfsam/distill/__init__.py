"""Phase 1: the YOLOv8 teacher and the localization-distilled YOLOv8n prompt generator (sections 3.3, 3.4)."""

from .config import SCHEMES, DistillConfig, LDConfig, TrainRecipe

__all__ = ["SCHEMES", "DistillConfig", "LDConfig", "TrainRecipe"]
