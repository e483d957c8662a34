import os
import stat
from pathlib import Path

import pytest

from ldfsam.atomic import atomic_path, write_text_atomic
from ldfsam.errors import LDFSAMError


def test_written_file_has_ordinary_permissions(tmp_path):
    target = tmp_path / "out.nii.gz"
    write_text_atomic(target, "x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def test_failure_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_refuses_to_overwrite_without_permission(tmp_path):
    target = tmp_path / "labels.seg.nrrd"
    target.write_text("user data")
    with pytest.raises(LDFSAMError, match="exists already; pass overwrite=True"):
        with atomic_path(target, overwrite=False):
            pass
    # The caller names its own argument; the command line shows the flag.
    with pytest.raises(LDFSAMError) as e:
        with atomic_path(target, overwrite=False, argument="force"):
            pass
    assert "pass force=True" in str(e.value)
    assert "pass --force" in e.value.for_command_line({"force": "--force"})
    assert target.read_text() == "user data"


def test_a_folder_that_cannot_be_made_is_one_error_naming_the_target(tmp_path):
    from ldfsam.errors import OutputError

    for target in (Path("/proc/ldfsam-test/out.json"), tmp_path / "file" / "out.json"):
        (tmp_path / "file").write_text("a file, not a folder")
        with pytest.raises(OutputError) as e:
            with atomic_path(target):
                pass
        assert str(e.value).startswith(f"{target}: cannot be written there")


def test_temporary_keeps_the_full_suffix(tmp_path):
    with atomic_path(tmp_path / "labels.seg.nrrd") as tmp:
        assert tmp.name.endswith(".seg.nrrd")
        tmp.write_text("ok")
    assert (tmp_path / "labels.seg.nrrd").read_text() == "ok"
