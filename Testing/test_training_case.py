"""Training cases from corrected results: the writer (files, record, never overwriting), the `ldfsam add-case`
command, and the ignore mask through prepare, Phase 1's YOLO export and Phase 2's loss."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ldfsam.data.phantom import make_phantom
from ldfsam.data.training_case import add_training_case, parse_slices, read_review
from ldfsam.errors import InputError, OutputError

SHAPE = (16, 48, 48)


def _phantom(folder: Path, seed: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    image, labels = make_phantom(SHAPE, 0.5, seed=seed, teeth_fraction=0.75)
    sitk.WriteImage(image, str(folder / f"scan{seed}.nrrd"))
    sitk.WriteImage(labels, str(folder / f"scan{seed}_result.nrrd"))
    return folder / f"scan{seed}.nrrd", folder / f"scan{seed}_result.nrrd", sitk.GetArrayFromImage(labels)


def test_parse_slices():
    assert parse_slices("3-5, 9") == [3, 4, 5, 9]
    for bad in ("", "a", "5-3"):
        with pytest.raises(InputError):
            parse_slices(bad)


def test_a_case_is_written_with_its_record_and_never_overwritten(tmp_path):
    vol, seg, labels = _phantom(tmp_path / "in")
    out = tmp_path / "training"
    teeth = sorted(int(v) for v in np.unique(labels) if v)
    paths = add_training_case(vol, seg, out, case_id="c1", reviewed_slices=[4, 5, 6], reviewed_structures=[teeth[0]],
                              origins={teeth[0]: "edited", teeth[1]: "prompted"})
    assert sorted(p.name for p in out.iterdir()) == ["c1.nii.gz", "c1.review.json", "c1_label.nii.gz"]
    written = sitk.ReadImage(str(paths["label"]))
    assert np.array_equal(sitk.GetArrayFromImage(written), labels)
    assert written.GetSpacing() == sitk.ReadImage(str(vol)).GetSpacing()
    record = read_review(paths["review"])
    assert record.slices == [4, 5, 6] and record.structures == [teeth[0]] and not record.all_reviewed
    assert record.origins[teeth[0]] == "edited" and record.origins[teeth[1]] == "prompted"
    assert record.origins[teeth[2]] == "automatic"
    mask = record.mask(labels)
    assert mask[4:7].all() and not mask[0].any()
    own = labels == teeth[0]
    assert mask[own].all() and mask.sum() > own.sum() + 3 * SHAPE[1] * SHAPE[2] - (own[4:7].sum())

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(OutputError, match="never overwritten"):
        add_training_case(vol, seg, out, case_id="c1", all_reviewed=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(InputError, match="nothing is marked as reviewed"):
        add_training_case(vol, seg, out, case_id="c2")
    with pytest.raises(InputError, match="outside the volume"):
        add_training_case(vol, seg, out, case_id="c2", reviewed_slices=[SHAPE[0]])
    with pytest.raises(InputError, match="not in the segmentation"):
        add_training_case(vol, seg, out, case_id="c2", reviewed_structures=[99])
    assert sorted(before) == sorted(p.name for p in out.iterdir())  # no temporary or partial case left


def test_add_case_command(tmp_path):
    vol, seg, _ = _phantom(tmp_path / "in")
    out = tmp_path / "training"
    cmd = [sys.executable, "-m", "ldfsam", "add-case", str(vol), str(seg), "--to", str(out), "--id", "scan",
           "--reviewed-slices", "2-5,9", "--origin", "11=edited"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "scan.review.json").read_text())
    assert record["reviewed"]["slices"] == [2, 3, 4, 5, 9] and record["structures"]["11"]["origin"] == "edited"
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "never overwritten" in again.stderr
    nothing = subprocess.run(cmd[:8] + ["--id", "other"], capture_output=True, text=True, timeout=120)
    assert nothing.returncode == 2 and "nothing is marked as reviewed" in nothing.stderr


def _training_folder(root: Path, wipe_unreviewed: bool) -> Path:
    """Two phantom cases: one reviewed on slices 3-9 and one tooth that reaches beyond them, one wholly reviewed.
    With ``wipe_unreviewed`` the partly reviewed case's label map loses every tooth voxel that was not reviewed
    (an uncorrected automatic result that missed them): only voxels that must be ignored differ, some of them in
    slices that Phase 2 uses for the reviewed tooth."""
    from ldfsam.data.training_case import ReviewRecord

    src = root / "src"
    for seed in (0, 1):
        image, labels = make_phantom(SHAPE, 0.5, seed=seed, teeth_fraction=0.75)
        src.mkdir(parents=True, exist_ok=True)
        arr = sitk.GetArrayFromImage(labels)
        if seed == 0:
            tooth = int(np.unique(arr[11])[1])
            if wipe_unreviewed:
                arr[ReviewRecord(slices=list(range(3, 10)), structures=[tooth]).mask(arr) == 0] = 0
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(labels)
        sitk.WriteImage(image, str(src / f"s{seed}.nrrd"))
        sitk.WriteImage(out, str(src / f"s{seed}_seg.nrrd"))
    folder = root / "training"
    add_training_case(src / "s0.nrrd", src / "s0_seg.nrrd", folder, "partial", reviewed_slices=range(3, 10),
                      reviewed_structures=[tooth])
    add_training_case(src / "s1.nrrd", src / "s1_seg.nrrd", folder, "full", all_reviewed=True)
    return folder


def _prepare(folder: Path, out: Path):
    from ldfsam.data.config import PreprocessConfig
    from ldfsam.data.prepared import PreparedData, PrepareOptions, prepare_dataset

    prepare_dataset(folder, out, PreprocessConfig(target_spacing=None, yolo_size=64, sam_size=64),
                    PrepareOptions(test_count=0, val_fraction=0.0))
    return PreparedData(out)


def test_prepare_carries_the_ignore_mask_to_both_phases(tmp_path):
    prepared = _prepare(_training_folder(tmp_path, wipe_unreviewed=False), tmp_path / "prepared")
    partial = prepared.entry("partial")
    assert partial.review["whole_slices"] == list(range(3, 10))
    assert np.array_equal(np.asarray(partial.reviewed()).reshape(SHAPE[0], -1).all(axis=1),
                          np.isin(np.arange(SHAPE[0]), range(3, 10)))
    assert set(partial.review["any_slices"]) > set(range(3, 10))  # the reviewed tooth reaches further
    assert prepared.entry("full").reviewed() is not None and prepared.entry("full").review["reviewed_fraction"] == 1
    # Phase 1: only reviewed slices of the partly reviewed case become YOLO images.
    yolo = prepared.yolo_data_yaml().parent
    slices = sorted(int(p.stem.split("_")[-1]) for p in (yolo / "images" / "train").glob("partial_*.png"))
    assert slices and set(slices) <= set(range(3, 10))
    assert len(list((yolo / "images" / "train").glob("full_*.png"))) > len(slices)
    # Phase 2: items of reviewed slices only, each with its valid mask.
    ds = prepared.slice_dataset("train")
    items = [ds[i] for i in range(len(ds))]
    used = {it["slice_index"]: it for it in items if it["case_id"] == "partial"}
    assert set(used) <= set(partial.review["any_slices"]) and set(used) - set(range(3, 10))
    assert all(it["valid"].shape == (1, 64, 64) for it in items)
    assert all(bool(it["valid"].min() == 1) == (it["case_id"] == "full" or it["slice_index"] in range(3, 10))
               for it in items)


def test_a_structure_review_masks_pixels_within_a_slice(tmp_path):
    vol, seg, labels = _phantom(tmp_path / "in")
    tooth = int(np.unique(labels[8])[1])
    add_training_case(vol, seg, tmp_path / "training", "c", reviewed_structures=[tooth])
    prepared = _prepare(tmp_path / "training", tmp_path / "prepared")
    entry = prepared.entry("c")
    assert entry.review["whole_slices"] == []  # no slice wholly reviewed: nothing for Phase 1's boxes
    ds = prepared.slice_dataset("train")
    z = [i for i in range(len(ds)) if ds[i]["slice_index"] == 8][0]
    valid = ds[z]["valid"]
    assert 0 < float(valid.mean()) < 0.5
    from ldfsam.data.preprocess import resize_class_map

    own = resize_class_map((labels[8] == tooth).astype(np.uint8), 64)[0].bool()
    assert own.any() and bool(valid[0][own].all())  # the reviewed tooth itself counts
    others = resize_class_map(((labels[8] > 0) & (labels[8] != tooth)).astype(np.uint8), 64)[0].bool()
    assert not bool(valid[0][others].all())  # the other teeth of the slice were not reviewed


def _short_finetune(prepared: Path, run: Path) -> dict:
    from ldfsam.checkpoint import load_state
    from ldfsam.finetune.config import FinetuneConfig
    from ldfsam.finetune.run import finetune
    from ldfsam.model.presets import model_config
    from ldfsam.progress import Progress

    model_cfg = model_config("small", prompt_mode="dense+sparse")
    model_cfg.sam.image_size, model_cfg.prompt_generator.image_size = 64, 64
    cfg = FinetuneConfig(data=str(prepared), epochs=1, batch_size=8, max_steps=3, lr=1e-3, num_workers=0,
                         precision="fp32", embedding_cache="off")
    finetune(cfg, model_cfg, run, progress=Progress("none"))
    tensors, _ = load_state(run / "state.safetensors")
    return {k: v for k, v in tensors.items() if k.startswith("model.mask_decoder.")}


def _gradients(prepared, with_mask: bool = True) -> torch.Tensor:
    """The gradient of Phase 2's loss (the trainer's own mask and loss functions) for a fixed small network over
    every training item of ``prepared``."""
    from ldfsam.finetune.loss import dice_bce_loss
    from ldfsam.finetune.trainer import _valid

    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 1, 3, padding=1)
    loader = torch.utils.data.DataLoader(prepared.slice_dataset("train"), batch_size=64)
    batch = next(iter(loader))
    valid = _valid(batch, torch.device("cpu")) if with_mask else None
    loss = dice_bce_loss(net(batch["sam_image"]), batch["mask"], valid=valid)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in net.parameters()])


def test_unreviewed_labels_do_not_change_the_gradient(tmp_path):
    """Label maps that differ only where nothing was reviewed give the same Phase 2 gradient; counted whole (the
    ignore mask removed) they do not."""
    prepared = {wipe: _prepare(_training_folder(tmp_path / f"w{int(wipe)}", wipe), tmp_path / f"p{int(wipe)}")
                for wipe in (False, True)}
    assert torch.equal(_gradients(prepared[False]), _gradients(prepared[True]))
    assert not torch.equal(_gradients(prepared[False], with_mask=False), _gradients(prepared[True], with_mask=False))


@pytest.mark.slow
def test_unreviewed_labels_do_not_move_the_weights(tmp_path):
    """Labels that differ only where nothing was reviewed train to bit-identical weights; without the review
    record (every voxel counted) the same two label maps train to different weights. Removing the ignore mask
    anywhere on the way (prepare, the dataset, the trainer, the loss) makes the first assertion fail."""
    runs = {}
    for wipe in (False, True):
        root = tmp_path / f"wipe{int(wipe)}"
        folder = _training_folder(root, wipe)
        runs[wipe] = _short_finetune(_prepare(folder, root / "prepared").root, root / "run")
    assert runs[False].keys() == runs[True].keys()
    assert all(torch.equal(runs[False][k], runs[True][k]) for k in runs[False])

    unmasked = {}
    for wipe in (False, True):
        root = tmp_path / f"wipe{int(wipe)}"
        (root / "training" / "partial.review.json").unlink()  # the case now counts whole
        unmasked[wipe] = _short_finetune(_prepare(root / "training", root / "prepared2").root, root / "run2")
    assert any(not torch.equal(unmasked[False][k], unmasked[True][k]) for k in unmasked[False])


def test_masked_loss_ignores_invalid_pixels_and_equals_the_plain_loss_on_ones():
    from ldfsam.finetune.loss import dice_bce_loss, hard_dice

    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    valid = torch.ones(2, 1, 8, 8)
    valid[:, :, :3] = 0
    other = target.clone()
    other[:, :, :3] = 1 - other[:, :, :3]
    a = dice_bce_loss(logits, target, valid=valid)
    (ga,) = torch.autograd.grad(a, logits)
    b = dice_bce_loss(logits, other, valid=valid)
    (gb,) = torch.autograd.grad(b, logits)
    assert torch.equal(a, b) and torch.equal(ga, gb) and not ga[:, :, :3].any()
    assert torch.allclose(dice_bce_loss(logits, target, valid=torch.ones_like(valid)), dice_bce_loss(logits, target))
    assert torch.equal(hard_dice(logits, target, valid=valid), hard_dice(logits, other, valid=valid))
