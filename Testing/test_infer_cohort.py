"""Many volumes at once through the Python API: which volumes the inputs name, their output names, the
manifest, the split between ranks, and ``segment_many`` with the demo model against ``segment_volume``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ldfsam.errors import InputError, OutputError
from ldfsam.infer.cohort import Rank, segment_many
from ldfsam.infer.cohort_inputs import check_apart, check_output_folder, expand_inputs, output_names
from ldfsam.infer.manifest import ManifestWriter, read_manifest


def _phantom(path: Path, seed: int, shape=(16, 48, 48)) -> Path:
    from ldfsam.data.phantom import make_phantom

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(make_phantom(shape, spacing=0.5, seed=seed)[0], str(path))
    return path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three phantoms in a folder, one in a DICOM series folder."""
    from ldfsam.data.volume import write_dicom_series

    root = tmp_path_factory.mktemp("cohort")
    files = [_phantom(root / "scans" / f"case{i}.nii.gz", seed=i) for i in range(3)]
    from ldfsam.data.phantom import make_phantom

    write_dicom_series(make_phantom((16, 48, 48), spacing=0.5, seed=7)[0], root / "dicom" / "patient7")
    return root, files


def test_inputs_mix_files_folders_dicom_and_lists(cohort, tmp_path):
    root, files = cohort
    (root / "scans" / "notes.txt").write_text("not a volume")
    (root / "scans" / "old.seg.nrrd").write_bytes(b"")  # a segmentation, not a scan
    listing = tmp_path / "list.txt"
    listing.write_text(f"# the DICOM patient\n\n{root / 'dicom' / 'patient7'}\n")
    assert expand_inputs([root / "scans", f"@{listing}"]) == files + [root / "dicom" / "patient7"]
    # A folder holding DICOM series folders gives each series; a list's relative paths start at the list.
    assert expand_inputs([root / "dicom"]) == [root / "dicom" / "patient7"]
    relative = root / "rel.txt"
    relative.write_text("scans/case1.nii.gz\n")
    assert expand_inputs([f"@{relative}", files[0]]) == [root / "scans" / "case1.nii.gz", files[0]]
    # Outputs of a run written into an input folder are not inputs of the next.
    assert expand_inputs([root / "scans"], exclude=[files[0]]) == files[1:]


def test_bad_inputs_name_the_path(cohort, tmp_path):
    root, files = cohort
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(InputError, match=f"{empty}: holds no volumes"):
        expand_inputs([empty])
    listing = tmp_path / "list.txt"
    listing.write_text(f"{files[0]}\nmissing.nii.gz\n")
    with pytest.raises(InputError, match=rf"{listing}: line 2: {tmp_path / 'missing.nii.gz'}: no such file"):
        expand_inputs([f"@{listing}"])
    with pytest.raises(InputError, match=f"{tmp_path / 'nolist.txt'}: no such list file"):
        expand_inputs([f"@{tmp_path / 'nolist.txt'}"])
    with pytest.raises(InputError, match=f"{files[1]}: is given more than once"):
        expand_inputs([files[1], root / "scans"])
    with pytest.raises(InputError, match="twice by"):
        expand_inputs([files[0], files[0]])
    with pytest.raises(InputError, match=f"{tmp_path / 'nope.nii.gz'}: no such file"):
        expand_inputs([tmp_path / "nope.nii.gz"])
    a_file = tmp_path / "out.txt"
    a_file.write_text("x")
    with pytest.raises(OutputError, match=f"{a_file}: is a file; give a folder"):
        check_output_folder(a_file)


def test_output_names_resolve_collisions_and_never_name_an_input(tmp_path):
    a = _phantom(tmp_path / "a" / "scan.nii.gz", 0, (8, 16, 16))
    b = _phantom(tmp_path / "b" / "scan.nrrd", 0, (8, 16, 16))
    c = _phantom(tmp_path / "out" / "scan_2.nii.gz", 0, (8, 16, 16))  # an input inside the output folder
    names, notes = output_names([a, b, c], tmp_path / "out", "nii.gz")
    assert names[a] == tmp_path / "out" / "scan.nii.gz"
    assert names[b] == tmp_path / "out" / "scan_3.nii.gz"  # scan_2.nii.gz is the input c
    assert names[c] == tmp_path / "out" / "scan_2_2.nii.gz"
    assert len(notes) == 2 and str(b) in notes[0] and "scan_3.nii.gz" in notes[0]
    # A name the manifest holds from an earlier run is kept, even when the list changed since.
    names, _ = output_names([b, a], tmp_path / "out", "seg.nrrd", {a.resolve(): tmp_path / "out" / "scan.seg.nrrd"})
    assert names[a] == tmp_path / "out" / "scan.seg.nrrd" and names[b] == tmp_path / "out" / "scan_2.seg.nrrd"


def test_ranks_share_every_volume_exactly_once():
    items = list(range(11))
    for world in (1, 2, 3, 4):
        shares = [Rank(r, world, r, world).share(items) for r in range(world)]
        assert sorted(sum(shares, [])) == items
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_ranks_need_an_output_folder_apart_from_the_input_folders(cohort, tmp_path):
    root, files = cohort
    scans = root / "scans"
    listing = tmp_path / "list.txt"
    listing.write_text(f"{scans}\n")
    for inputs, out in (([scans], scans), ([scans], scans / "out"), ([f"@{listing}"], scans / "a" / "b"),
                        ([root], scans / "out")):
        with pytest.raises(OutputError, match="lies inside the input folder"):
            check_apart(inputs, out)
    check_apart([scans, files[0]], root / "results")  # beside the inputs: fine
    check_apart([files[0]], scans / "out")  # a file's folder is not an input folder
    with pytest.raises(OutputError, match="lies inside the input folder"):
        segment_many([scans], scans / "out", rank=Rank(1, 2, 1, 2))
    assert not (scans / "out").exists()


def test_manifest_files_merge_latest_record_wins(tmp_path):
    zero, one = ManifestWriter(tmp_path, 0, 2), ManifestWriter(tmp_path, 1, 2)
    zero.record(tmp_path / "a.nii.gz", tmp_path / "a.seg.nrrd", "failed", 1.0, "a: broken")
    one.record(tmp_path / "b.nii.gz", tmp_path / "b.seg.nrrd", "done", 2.0)
    one.record(tmp_path / "a.nii.gz", tmp_path / "a.seg.nrrd", "done", 3.0)  # retried on another rank, later
    with open(tmp_path / "manifest.rank0.jsonl", "a") as f:
        f.write("a line added by hand\n")
    merged = read_manifest(tmp_path)
    assert {Path(k).name: r.status for k, r in merged.items()} == {"a.nii.gz": "done", "b.nii.gz": "done"}
    assert merged[str((tmp_path / "a.nii.gz").resolve())].rank == 1
    # Each file holds only its writer's records; a new writer for a file keeps what it held.
    lines = (tmp_path / "manifest.rank1.jsonl").read_text().splitlines()
    assert [json.loads(x)["input"].endswith(("b.nii.gz", "a.nii.gz")) for x in lines] == [True, True]
    ManifestWriter(tmp_path, 0, 2).record(tmp_path / "c.nii.gz", tmp_path / "c.seg.nrrd", "done", 1.0)
    assert len((tmp_path / "manifest.rank0.jsonl").read_text().splitlines()) == 2
    assert not list(tmp_path.glob(".*part*"))


def _labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.slow  # a minute or more with the bundled lite model on 2 cores; CI runs it (-m slow)
def test_segment_many_matches_segment_volume_resumes_and_records_failures(cohort, tmp_path):
    from ldfsam.infer import segment_volume

    root, files = cohort
    bad = tmp_path / "in" / "broken.nii.gz"
    bad.parent.mkdir()
    bad.write_bytes(b"not a volume")
    out = tmp_path / "out"
    first = segment_many([root / "scans", root / "dicom", bad], out, format="nii.gz", device="cpu")
    assert (first.done, first.failed, first.skipped, first.model_loads) == (4, 1, 0, 1)
    failed = [r for r in first.records if r.status == "failed"]
    assert len(failed) == 1 and failed[0].input == str(bad) and str(bad) in failed[0].error
    assert sorted(p.name for p in out.iterdir()) == ["case0.nii.gz", "case1.nii.gz", "case2.nii.gz",
                                                    "manifest.jsonl", "patient7.nii.gz"]
    # One model load, read ahead and written behind: the same labels as one volume per call.
    for f in files[:1]:
        alone = segment_volume(f, None, device="cpu")
        assert np.array_equal(_labels(out / f.name), alone.labels)
        assert alone.labels.any()

    # Rerun: what is done is skipped, the failure is tried again (and fails again).
    again = segment_many([root / "scans", root / "dicom", bad], out, format="nii.gz", device="cpu")
    assert (again.done, again.failed, again.skipped, again.model_loads) == (0, 1, 4, 1)
    # Repaired, it is done; a deleted output is made again; an output the run did not make is not overwritten.
    _phantom(bad, seed=5)
    (out / "case1.nii.gz").unlink()
    stranger = _phantom(tmp_path / "other" / "case9.nii.gz", seed=9)
    (out / "case9.nii.gz").write_bytes(b"someone else's file")
    third = segment_many([root / "scans", root / "dicom", bad, stranger], out, format="nii.gz", device="cpu")
    assert (third.done, third.failed, third.skipped) == (2, 1, 3)
    refused = next(r for r in third.records if r.status == "failed")
    assert refused.input == str(stranger) and "case9.nii.gz: exists already; pass force=True" in refused.error
    assert (out / "case9.nii.gz").read_bytes() == b"someone else's file"
    fourth = segment_many([stranger], out, format="nii.gz", device="cpu", force=True)
    assert (fourth.done, fourth.failed) == (1, 0) and _labels(out / "case9.nii.gz").shape == (16, 48, 48)
    manifest = read_manifest(out)
    assert len(manifest) == 6 and all(r.status == "done" for r in manifest.values())
    assert not [p for p in out.iterdir() if "part" in p.name]
