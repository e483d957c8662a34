"""The extension's CMake files, run by the real CMake: configure, install, and use the installed tree.

No Slicer build exists here, so a small stand-in for Slicer's CMake package provides the three macros the
extension uses, doing what Slicer's do with the files: ``slicerMacroBuildScriptedModule`` hands SCRIPTS and
RESOURCES to ``ctkMacroCompilePythonScript``, which installs each file at its relative path under
``qt-scripted-modules``; ``slicer_add_python_unittest`` registers a CTest test. What is checked is ours: the file
lists, the core install, the test registration, and that the installed tree imports and runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIB_DIR = "lib/Slicer-5.8/qt-scripted-modules"

SLICER_CONFIG = textwrap.dedent(f"""
    set(Slicer_USE_FILE "${{CMAKE_CURRENT_LIST_DIR}}/UseSlicer.cmake")
    set(Slicer_EXTENSION_GENERATE_CONFIG "${{CMAKE_CURRENT_LIST_DIR}}/Empty.cmake")
    set(Slicer_EXTENSION_CPACK "${{CMAKE_CURRENT_LIST_DIR}}/Empty.cmake")
    set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "{LIB_DIR}")
    set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "{LIB_DIR}")
""")
USE_SLICER = textwrap.dedent("""
    enable_testing()
    macro(ctkMacroCompilePythonScript)
      cmake_parse_arguments(MY "NO_INSTALL_SUBDIR;GLOBAL_TARGET" "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR"
                            "SCRIPTS;RESOURCES" ${ARGN})
      if(NOT MY_SOURCE_DIR)
        set(MY_SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
      endif()
      foreach(f IN LISTS MY_SCRIPTS MY_RESOURCES)
        if(NOT EXISTS "${MY_SOURCE_DIR}/${f}")
          message(FATAL_ERROR "${MY_TARGET_NAME}: no such file ${MY_SOURCE_DIR}/${f}")
        endif()
        get_filename_component(d "${f}" DIRECTORY)
        install(FILES "${MY_SOURCE_DIR}/${f}" DESTINATION "${MY_INSTALL_DIR}/${d}")
      endforeach()
      set_property(GLOBAL APPEND PROPERTY LDFSAM_STUB_TARGETS ${MY_TARGET_NAME})
    endmacro()
    macro(slicerMacroBuildScriptedModule)
      cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
      ctkMacroCompilePythonScript(TARGET_NAME ${MY_SLICER_NAME} SCRIPTS "${MY_SLICER_SCRIPTS}"
        RESOURCES "${MY_SLICER_RESOURCES}" DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}
        INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR} NO_INSTALL_SUBDIR)
    endmacro()
    macro(slicer_add_python_unittest)
      cmake_parse_arguments(MY "" "SCRIPT" "SLICER_ARGS" ${ARGN})
      if(NOT EXISTS "${MY_SCRIPT}")
        message(FATAL_ERROR "slicer_add_python_unittest: no such script ${MY_SCRIPT}")
      endif()
      get_filename_component(name "${MY_SCRIPT}" NAME_WE)
      add_test(NAME py_${name} COMMAND Slicer --testing ${MY_SLICER_ARGS} --python-script ${MY_SCRIPT})
    endmacro()
""")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    root = tmp_path_factory.mktemp("cmake")
    stub = root / "Slicer"
    stub.mkdir()
    (stub / "SlicerConfig.cmake").write_text(SLICER_CONFIG)
    (stub / "UseSlicer.cmake").write_text(USE_SLICER)
    (stub / "Empty.cmake").write_text("")
    build, prefix = root / "build", root / "install"
    for cmd in ([cmake, "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={stub}", "-DBUILD_TESTING=ON"],
                [cmake, "--install", str(build), "--prefix", str(prefix)]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
    ctest = subprocess.run([shutil.which("ctest") or "ctest", "-N", "--test-dir", str(build)], capture_output=True,
                           text=True, timeout=60)
    (root / "ctest.txt").write_text(ctest.stdout)
    return prefix


def test_install_tree_holds_both_modules_their_libs_resources_and_the_core(installed):
    lib = installed / LIB_DIR
    for path in ("LDFSAMSegment.py", "LDFSAMTrain.py", "LDFSAMSegmentLib/process.py", "LDFSAMTrainLib/commands.py",
                 "LDFSAMSegmentLib/lifecycle.py", "LDFSAMSegmentLib/bindings.py", "LDFSAMSegmentLib/widget.py",
                 "LDFSAMSegmentLib/install_logic.py", "LDFSAMTrainLib/widget.py", "LDFSAMTrainLib/logic.py",
                 "Testing/Python/LDFSAMSegmentFullTest.py", "Testing/Python/LDFSAMTrainFullTest.py",
                 "Resources/UI/LDFSAMSegment.ui", "Resources/UI/LDFSAMTrain.ui", "Resources/Icons/LDFSAMTrain.png",
                 "Resources/requirements.txt", "Testing/Python/LDFSAMSegmentSelfTest.py",
                 "Testing/Python/LDFSAMTrainSelfTest.py", "ldfsam/resources/models.json"):
        assert (lib / path).is_file(), path
    core = {p.relative_to(REPO).as_posix() for p in (REPO / "ldfsam").rglob("*.py") if "__pycache__" not in p.parts}
    installed_core = {p.relative_to(lib).as_posix() for p in (lib / "ldfsam").rglob("*.py")}
    assert core == installed_core
    assert not list(lib.rglob("__pycache__"))


def test_the_light_self_tests_are_registered_with_ctest(installed):
    listing = (installed.parent / "ctest.txt").read_text()
    assert sorted(re.findall(r"Test\s+#\d+: (\S+)", listing)) == ["py_LDFSAMSegmentSelfTest", "py_LDFSAMTrainSelfTest"]


def test_installed_tree_imports_and_runs_the_core_in_a_child_process(installed, tmp_path):
    lib = installed / LIB_DIR
    code = textwrap.dedent("""
        import os, sys
        from LDFSAMSegmentLib.commands import core_env
        from LDFSAMSegmentLib.process import BackgroundProcess
        import LDFSAMTrainLib.commands, ldfsam
        print(ldfsam.__file__)
        # The Train module's Lib reaches the shared one (installed by LDFSAM Segment) in the same folder.
        from types import SimpleNamespace
        p = SimpleNamespace(datasetFolder="data", outputFolder=".", annotationBudget=20, teacherScale="x",
                            studentScale="n", samPreset="vit_b", samCheckpoint="", distillEpochs=1,
                            finetuneEpochs=2, batchSize=4, device="auto")
        s = LDFSAMTrainLib.commands.settings_from(p)
        assert (s.dataset, s.output, s.sam_checkpoint, s.budget_percent) == ("data", "", None, 20), s
        # A child whose path holds only the network guard: core_env must make the installed core importable.
        child = "import ldfsam; print(ldfsam.__file__); from ldfsam.cli import main; main(['--version'])"
        base = {"PATH": "", "PYTHONPATH": os.environ["LDFSAM_NONET"], "LDFSAM_TEST_NO_NETWORK": "1"}
        process = BackgroundProcess([sys.executable, "-c", child], env=core_env(sys.argv[1], base=base)).start()
        out = process.wait(timeout=120)
        print(process.returncode, *out.stdout)
    """)
    nonet = str(REPO / "Testing" / "_nonet")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=os.pathsep.join([nonet, str(lib)]), LDFSAM_NONET=nonet)
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "home")], capture_output=True, text=True,
                         env=env, cwd=str(tmp_path), timeout=180)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    import ldfsam

    core = str(lib / "ldfsam" / "__init__.py")
    assert lines == [core, f"0 {core} ldfsam {ldfsam.__version__}"]
