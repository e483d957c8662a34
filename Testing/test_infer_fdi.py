"""Estimated FDI tooth numbers of split teeth, checked against the phantom's true FDI label map."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ldfsam.data.phantom import make_phantom
from ldfsam.infer.fdi import assign_fdi, fdi_segment_names, segment_names
from ldfsam.infer.postprocess import split_teeth

ALL = [q * 10 + p for q in (1, 2, 3, 4) for p in range(1, 9)]
SHAPE = (48, 128, 128)


def _phantom_truth(missing=(), jaw=None, shape=SHAPE) -> sitk.Image:
    _, labels = make_phantom(shape, 0.25, seed=0, missing=list(missing), noise=0.0, fillings=0)
    if jaw is not None:
        arr = sitk.GetArrayFromImage(labels)
        arr[(arr > 30) if jaw == "upper" else (arr < 30)] = 0
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(labels)
        labels = out
    return labels


def _split(truth: sitk.Image, open_bite: bool = True):
    """Binarised truth split into components; ``open_bite`` clears the occlusal slice (a scan with a bite block)
    because split_teeth does not separate upper and lower molars in contact."""
    arr = sitk.GetArrayFromImage(truth)
    mask = arr > 0
    if open_bite:
        mask[arr.shape[0] // 2] = False
    comps, n = split_teeth(mask, truth.GetSpacing(), 0.0)
    return arr, comps, n


def _majority(arr: np.ndarray, comps: np.ndarray, n: int):
    """Per component: (majority FDI label, share of its voxels holding that label)."""
    out = {}
    for c in range(1, n + 1):
        values, counts = np.unique(arr[comps == c], return_counts=True)
        keep = values > 0
        values, counts = values[keep], counts[keep]
        out[c] = (int(values[counts.argmax()]), float(counts.max() / counts.sum()))
    return out


def _wrong(truth: sitk.Image, open_bite: bool = True):
    arr, comps, n = _split(truth, open_bite)
    numbers = assign_fdi(comps, truth)
    return n, numbers, {c: (t, numbers[c]) for c, (t, _) in _majority(arr, comps, n).items() if numbers[c] != t}


def test_phantom_labels_follow_the_patient_in_lps():
    """The truth used below: with the identity direction the phantom's FDI labels sit where LPS says."""
    truth = _phantom_truth()
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(truth)
    c = {lab: np.array(stats.GetCentroid(lab)) for lab in stats.GetLabels()}
    assert c[21][0] > c[11][0] and c[31][0] > c[41][0]  # quadrants 2 and 3 on the patient's left (+x)
    assert c[11][1] < c[16][1] and c[41][1] < c[46][1]  # incisors anterior (-y) of molars
    assert c[11][2] > c[41][2] and c[26][2] > c[36][2]  # upper jaw superior (+z)


def test_all_32_teeth_get_their_fdi_numbers():
    n, numbers, wrong = _wrong(_phantom_truth())
    assert n == 32 and wrong == {}
    comps = _split(_phantom_truth())[1]
    names = fdi_segment_names(comps, _phantom_truth())
    assert sorted(names) == sorted(f"Tooth {t}" for t in ALL)


@pytest.mark.parametrize("transform", ["flip_x", "flip_xy", "swap_xy", "sagittal"])
def test_storage_order_and_direction_do_not_change_the_answer(transform):
    truth = _phantom_truth()
    if transform == "flip_x":
        stored = sitk.Flip(truth, [True, False, False])
    elif transform == "flip_xy":
        stored = sitk.Flip(truth, [True, True, False])
    elif transform == "swap_xy":
        stored = sitk.PermuteAxes(truth, [1, 0, 2])
    else:  # slices stacked along left-right
        stored = sitk.PermuteAxes(truth, [2, 1, 0])
    assert stored.GetDirection() != truth.GetDirection()
    assert np.allclose(stored.TransformIndexToPhysicalPoint((0, 0, 0)), stored.GetOrigin())
    arr = sitk.GetArrayFromImage(stored)
    # The occlusal plane is the middle of the phantom's z axis, wherever it lands in the stored array.
    axis = 2 - [abs(v) for v in np.reshape(stored.GetDirection(), (3, 3))[2]].index(1.0)
    mask = arr > 0
    np.moveaxis(mask, axis, 0)[arr.shape[axis] // 2] = False
    comps, n = split_teeth(mask, stored.GetSpacing(), 0.0)
    numbers = assign_fdi(comps, stored)
    majority = _majority(arr, comps, n)
    assert n == 32
    assert {c: numbers[c] for c in majority} == {c: t for c, (t, _) in majority.items()}


@pytest.mark.parametrize("axis", [0, 1, 2])  # pitch (about left-right), roll, yaw (about superior)
def test_a_tilted_head(axis):
    """The head turned by 20° about each axis (labels resampled nearest-neighbour about the volume's centre)."""
    import math

    truth = _phantom_truth(shape=(64, 128, 128))
    arr = sitk.GetArrayFromImage(truth)
    arr[32] = 0  # open bite
    opened = sitk.GetImageFromArray(arr)
    opened.CopyInformation(truth)
    turn = sitk.Euler3DTransform()
    turn.SetCenter(opened.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in opened.GetSize()]))
    angles = [0.0, 0.0, 0.0]
    angles[axis] = math.radians(20)
    turn.SetRotation(*angles)
    tilted = sitk.Resample(opened, opened, turn, sitk.sitkNearestNeighbor, 0)
    arr = sitk.GetArrayFromImage(tilted)
    comps, n = split_teeth(arr > 0, tilted.GetSpacing(), 0.0)
    numbers = assign_fdi(comps, tilted)
    majority = _majority(arr, comps, n)
    assert n >= 31
    assert {c: numbers[c] for c in majority} == {c: t for c, (t, _) in majority.items()}


def test_a_mirrored_direction_mirrors_the_numbers():
    """Same voxels, direction saying x runs to the patient's right: left and right quadrants swap."""
    truth = _phantom_truth()
    arr, comps, n = _split(truth)
    mirrored = sitk.Image(truth)
    mirrored.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
    numbers = assign_fdi(comps, mirrored)
    swap = {1: 2, 2: 1, 3: 4, 4: 3}
    for c, (t, _) in _majority(arr, comps, n).items():
        assert numbers[c] == swap[t // 10] * 10 + t % 10


def test_any_single_missing_tooth_keeps_the_others_numbers():
    """An extracted tooth (its space kept) must not shift its neighbours' numbers: all 32 cases."""
    failures = {}
    for tooth in ALL:
        n, _, wrong = _wrong(_phantom_truth(missing=[tooth]))
        assert n == 31
        if wrong:
            failures[tooth] = wrong
    assert failures == {}


@pytest.mark.parametrize("missing", [[18, 28, 38, 48], [11, 21, 31, 41], [16, 26, 36, 46], [12, 22, 33], [14, 45]])
def test_groups_of_missing_teeth(missing):
    n, _, wrong = _wrong(_phantom_truth(missing=missing))
    assert n == 32 - len(missing) and wrong == {}


@pytest.mark.parametrize("jaw", ["upper", "lower"])
def test_one_jaw_only(jaw):
    n, numbers, wrong = _wrong(_phantom_truth(jaw=jaw))
    assert n == 16 and wrong == {}
    assert all((v < 30) == (jaw == "upper") for v in numbers.values())


def test_closed_bite_numbers_every_single_tooth_component():
    """Without the bite opened split_teeth merges touching upper and lower molars (one component, two teeth):
    those get one number of the two; every component holding one tooth is numbered right, none twice."""
    arr, comps, n = _split(_phantom_truth(), open_bite=False)
    numbers = assign_fdi(comps, _phantom_truth())
    majority = _majority(arr, comps, n)
    pure = {c for c, (_, share) in majority.items() if share > 0.95}
    assert len(pure) >= 20
    assert all(numbers[c] == majority[c][0] for c in pure)
    given = [v for v in numbers.values() if v is not None]
    assert len(given) == len(set(given))
    for c in set(majority) - pure:  # a merged pair gets one of its own teeth's numbers, or none
        inside = set(np.unique(arr[comps == c])) - {0}
        assert numbers[c] is None or numbers[c] in inside


def test_fragments_and_degenerate_inputs():
    ref = _phantom_truth()
    empty = np.zeros(SHAPE, np.uint16)
    assert assign_fdi(empty, ref) == {} and fdi_segment_names(empty, ref) == []
    one = empty.copy()
    one[20:30, 40:50, 40:50] = 1
    assert assign_fdi(one, ref) == {1: None}
    assert fdi_segment_names(one, ref) == ["Unnumbered tooth 1"]
    # A tiny fragment next to the 32 teeth stays unnumbered and changes nothing else.
    arr, comps, n = _split(ref)
    comps = comps.copy()
    comps[2:4, 2:4, 2:4] = n + 1
    numbers = assign_fdi(comps, ref)
    assert numbers[n + 1] is None
    assert all(numbers[c] == t for c, (t, _) in _majority(arr, comps, n).items())
    names = segment_names(numbers)
    assert names[n] == "Unnumbered tooth 1" and len(set(names)) == n + 1


def test_more_than_eight_in_a_quadrant_leaves_the_smallest_unnumbered():
    ref = _phantom_truth()
    arr, comps, n = _split(ref)
    comps = comps.astype(np.uint16)
    # Split tooth 16 into two halves along x: the quadrant now holds 9 pieces.
    c16 = next(c for c, (t, _) in _majority(arr, comps, n).items() if t == 16)
    zz, yy, xx = np.nonzero(comps == c16)
    half = xx < np.median(xx)
    comps[zz[half], yy[half], xx[half]] = n + 1
    numbers = assign_fdi(comps, ref)
    given = [v for v in numbers.values() if v is not None]
    assert len(given) == len(set(given))
    assert sum(1 for v in numbers.values() if v is not None and v // 10 == 1) <= 8


@pytest.mark.slow  # a whole phantom with the lite demo model; CI runs it (-m slow)
def test_segment_split_teeth_names_segments_by_fdi(tmp_path):
    """The pipeline with the bundled demo model on a phantom stored with a flipped x axis: segments are named by
    FDI number. The scan is in occlusion, so touching upper and lower molars can come out as one segment: such a
    segment holds exactly one upper and one lower tooth of the same position and is named after one of them; every
    other segment holds one tooth and carries its number; every tooth of the phantom is in exactly one segment."""
    from ldfsam.infer import segment_volume
    from ldfsam.progress import Progress

    image, labels = make_phantom(SHAPE, 0.25, seed=1)
    image, labels = sitk.Flip(image, [True, False, False]), sitk.Flip(labels, [True, False, False])
    sitk.WriteImage(image, str(tmp_path / "cbct.nrrd"))
    result = segment_volume(tmp_path / "cbct.nrrd", device="cpu", split=True, progress=Progress("none"),
                            min_island_mm3=1.0)
    truth = sitk.GetArrayFromImage(labels)
    names = result.segment_names
    assert len(names) == int(result.labels.max()) and len(set(names)) == len(names)
    single, pairs, found = 0, 0, []
    for i, name in enumerate(names, start=1):
        values, counts = np.unique(truth[result.labels == i], return_counts=True)
        counts, values = counts[values > 0], values[values > 0]
        teeth = sorted(int(v) for v in values[counts > 0.1 * counts.sum()])  # the teeth this segment is made of
        found += teeth
        if len(teeth) == 1:
            single += 1
            assert name == f"Tooth {teeth[0]}"
        else:
            pairs += 1
            assert len(teeth) == 2, (name, teeth)
            upper, lower = teeth if teeth[0] // 10 in (1, 2) else teeth[::-1]
            assert (upper // 10, lower // 10) in ((1, 4), (2, 3)) and upper % 10 == lower % 10, (name, teeth)
            assert name in (f"Tooth {upper}", f"Tooth {lower}")
    in_phantom = sorted(int(v) for v in np.unique(truth) if v > 0)
    assert sorted(found) == in_phantom  # each tooth found, none in two segments
    assert single + pairs == len(names) and single >= len(in_phantom) - 2 * 6  # at most the 6 molar pairs merged
