"""The student's training loss: ultralytics' YOLOv8 detection loss plus KD or LD terms (section 3.3).

L_total = L_det + lambda_main * L_LD(main) + lambda_vlr * L_LD(VLR)   (scheme "ld_main_vlr")

* Main region: the positives (``fg_mask``) of ultralytics' task-aligned assigner. Each anchor's LD is weighted by
  its assigned target score and the sum is divided by the sum of target scores, exactly as ultralytics weights and
  normalises the DFL term that LD complements; the result is a score-weighted mean over the region.
* VLR: see :mod:`ldfsam.distill.vlr`. Its anchors have no target score, so their LD is a plain mean over the region.
* "kd": binary KD on the class logits of every anchor, normalised by the target-score sum like the BCE class loss.

Like v8DetectionLoss, the returned loss vector is multiplied by the batch size; the teacher is held in a
:class:`FrozenTeacher` handle, never as a module child, so it is not in the student's state_dict, EMA or checkpoints.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch

from .config import LDConfig
from .ld_loss import kd_per_anchor, ld_per_anchor
from .vlr import valuable_localization_region


class FrozenTeacher:
    """Holds the teacher DetectionModel outside any module tree: deep copies share it, pickles drop it."""

    def __init__(self, model: torch.nn.Module):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model

    def __deepcopy__(self, memo: Dict[int, Any]) -> FrozenTeacher:
        return self

    def __getstate__(self) -> Dict[str, Any]:
        return {"model": None}

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Raw head outputs {"boxes": B x 4R x A, "scores": B x C x A} of the frozen teacher."""
        self.model.eval()
        out = self.model(images)
        out = out[1] if isinstance(out, tuple) else out
        return out.get("one2many", out)


def make_distillation_loss(model: torch.nn.Module, teacher: FrozenTeacher, ld: LDConfig):
    """Build the criterion for ``model`` (a DetectionModel) distilled from ``teacher`` under ``ld.scheme``."""
    from ultralytics.utils.loss import v8DetectionLoss

    class DistillationLoss(v8DetectionLoss):
        def __init__(self) -> None:
            super().__init__(model)
            self.teacher = teacher
            self.ld = ld
            self._assigned: Tuple[Any, ...] = ()
            # The assigner's inputs (pixel gt boxes and their mask) and outputs (target scores) feed LD and VLR.
            self.assigner.register_forward_hook(self._record)

        def _record(self, module: Any, args: Tuple[Any, ...], output: Tuple[torch.Tensor, ...]) -> None:
            self._assigned = (args[4], args[5], output[2])  # gt_bboxes, mask_gt, target_scores

        def loss(self, preds: Dict[str, Any], batch: Dict[str, Any]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
            bsz = preds["boxes"].shape[0]
            (fg_mask, _, _, anchor_points, stride_tensor), det, items = self.get_assigned_targets_and_loss(preds, batch)
            gt_bboxes, mask_gt, target_scores = self._assigned
            t = self.teacher(batch["img"])
            if t["boxes"].shape != preds["boxes"].shape or t["scores"].shape != preds["scores"].shape:
                raise RuntimeError(f"teacher outputs {tuple(t['boxes'].shape)}/{tuple(t['scores'].shape)} do not match "
                                   f"the student's {tuple(preds['boxes'].shape)}/{tuple(preds['scores'].shape)}")
            ts_sum = target_scores.sum().clamp(min=1)
            extra: Dict[str, torch.Tensor] = {}
            if self.ld.scheme == "kd":
                s_cls = preds["scores"].permute(0, 2, 1).reshape(-1, self.nc)
                t_cls = t["scores"].permute(0, 2, 1).reshape(-1, self.nc)
                kd = kd_per_anchor(s_cls, t_cls, self.ld.kd_temperature)
                extra["kd_loss"] = self.ld.lambda_kd * kd.sum() / ts_sum
            else:
                s_box = preds["boxes"].permute(0, 2, 1)  # B x A x 4R
                t_box = t["boxes"].permute(0, 2, 1)
                fg = fg_mask.bool()
                weight = target_scores.sum(-1)[fg]
                main = ld_per_anchor(s_box[fg], t_box[fg], self.ld.temperature, self.reg_max)
                extra["ld_main"] = self.ld.lambda_main * (main * weight).sum() / ts_sum
                if self.ld.scheme == "ld_main_vlr":
                    sizes = [f.shape[2] * f.shape[3] for f in preds["feats"]]
                    vlr = valuable_localization_region(
                        anchor_points * stride_tensor, stride_tensor.squeeze(-1), sizes, gt_bboxes, mask_gt, fg,
                        gamma=self.ld.vlr_gamma, anchor_scale=self.ld.anchor_scale, topk=self.ld.atss_topk)
                    per = ld_per_anchor(s_box[vlr], t_box[vlr], self.ld.temperature, self.reg_max)
                    extra["ld_vlr"] = self.ld.lambda_vlr * per.sum() / vlr.sum().clamp(min=1)
            total = torch.cat([det, torch.stack(list(extra.values())).to(det.dtype)])
            items = {**items, **{k: v.detach() for k, v in extra.items()}}
            return total * bsz, items

    return DistillationLoss()
