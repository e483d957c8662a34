"""The Slicer extension's packaging: CMake, the catalog entry, resources, .ui files."""

from __future__ import annotations

import ast
import json
import os
import re
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "LDFSAMSegment"))

from LDFSAMSegmentLib.bindings import PARAMETER_PROPERTY, PATH_PROPERTY, bound_widgets, path_text  # noqa: E402

MODULES = ("LDFSAMSegment", "LDFSAMTrain")
# The parts of each module's Lib package that need Slicer; every other one is plain Python, tested here.
SLICER_LAYER = {"LDFSAMSegmentLib": ("parameters", "logic", "install_logic", "interactive_logic", "widget",
                                     "model_section", "interactive_section", "training_section", "lifecycle",
                                     "self_test", "segment_origin", "training_logic"),
                "LDFSAMTrainLib": ("parameters", "logic", "widget")}
# Where the wrapper's field types meet the widget classes that parameterNodeWrapper can connect them to.
CONNECTABLE = {"QCheckBox": {"bool"}, "QSpinBox": {"int"}, "QDoubleSpinBox": {"float"}, "QComboBox": {"Choice"},
               "QLineEdit": {"str"}, "ctkPathLineEdit": {"Path"}, "qMRMLNodeComboBox": {"node"}}


def cmake_sets(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    return {m.group(1): m.group(2) for m in re.finditer(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text)}


def distinct_colors(img) -> int:
    import numpy as np

    return len(np.unique(np.asarray(img.convert("RGB")).reshape(-1, 3), axis=0))


def test_there_is_no_s4ext_file():
    # Slicer 5.8 and later (the versions supported) build the Extensions Index from catalog entries (.json):
    # Extensions/CMake/SlicerBlockBuildPackageAndUploadExtensions.cmake globs *.json at v5.8.1 and v5.10.0.
    assert not list(REPO.glob("*.s4ext"))


def test_catalog_entry_follows_the_extensions_index_schema_and_agrees_with_cmake():
    entry = json.loads((REPO / "LDFSAM.json").read_text(encoding="utf-8"))
    cm = cmake_sets(REPO / "CMakeLists.txt")
    # slicer-extension-catalog-entry-schema v1.0.2: these keys only (additionalProperties false), three required.
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "dicom_support_rule", "build_subdirectory", "enabled", "tier"}
    assert set(entry) <= allowed
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert re.search(r"slicer-extension-catalog-entry-schema-v1\.0\.\d+\.json#?$", entry["$schema"])
    assert entry["category"] == cm["EXTENSION_CATEGORY"] == "Segmentation"
    assert entry["scm_url"].startswith(cm["EXTENSION_HOMEPAGE"]) and entry["scm_revision"] == "main"
    assert entry["scm_type"] in ("git", "local")
    assert entry["build_dependencies"] == cm["EXTENSION_DEPENDS"].split() == ["PyTorch"]
    assert entry["build_subdirectory"] == "."
    assert isinstance(entry["tier"], int) and 1 <= entry["tier"] <= 5


def test_contributors_are_names_with_their_organization():
    # The Extensions Index review asks for "Name (Organization)", in the extension and in every module.
    pattern = re.compile(r"^[^(),]+ \([^()]+\)$")
    contributors = cmake_sets(REPO / "CMakeLists.txt")["EXTENSION_CONTRIBUTORS"]
    assert all(pattern.match(c.strip()) for c in contributors.split(",")), contributors
    for m in MODULES:
        tree = ast.parse((REPO / m / f"{m}.py").read_text(encoding="utf-8"))
        values = [ast.literal_eval(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)
                  and any(isinstance(t, ast.Attribute) and t.attr == "contributors" for t in n.targets)]
        assert values and all(pattern.match(c) for c in values[0]), (m, values)


def test_description_and_readme_name_the_licences():
    description = cmake_sets(REPO / "CMakeLists.txt")["EXTENSION_DESCRIPTION"]
    assert "AGPL-3.0" in description and "not a medical device" in description
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "Apache-2.0" in readme and "AGPL-3.0" in readme and "LICENSE.txt" in readme


def test_every_module_is_added_and_the_urls_point_at_files_of_the_repository():
    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.findall(r"add_subdirectory\((\w+)\)", top) == list(MODULES)
    cm = cmake_sets(REPO / "CMakeLists.txt")
    raw = "https://raw.githubusercontent.com/LDFSAM/SlicerLDFSAM/main/"
    for url in [cm["EXTENSION_ICONURL"]] + cm["EXTENSION_SCREENSHOTURLS"].split():
        assert url.startswith(raw) and (REPO / url[len(raw):]).is_file(), url


def _listed_files(module: str) -> set:
    text = (REPO / module / "CMakeLists.txt").read_text(encoding="utf-8").replace("${MODULE_NAME}", module)
    listed = set()
    for block in re.findall(r"set\(MODULE_PYTHON_(?:SCRIPTS|RESOURCES)\s+(.*?)\)", text, re.S):
        listed |= set(block.split())
    return listed


@pytest.mark.parametrize("module", MODULES)
def test_module_cmake_lists_every_script_and_resource(module):
    folder = REPO / module
    listed = _listed_files(module)
    on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.name != "CMakeLists.txt"}
    assert on_disk - listed == set(), "files that would not be installed"
    assert listed - on_disk == set(), "listed files that do not exist"
    assert {f"{module}.py", f"Resources/UI/{module}.ui", f"Resources/Icons/{module}.png"} <= listed


@pytest.mark.parametrize("module", MODULES)
def test_module_registers_its_light_self_test_only(module):
    cmake = (REPO / module / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"if\(BUILD_TESTING\)\s+#[^\n]*\n\s*add_subdirectory\(Testing\)", cmake)
    assert "add_subdirectory(Python)" in (REPO / module / "Testing" / "CMakeLists.txt").read_text()
    tests = (REPO / module / "Testing" / "Python" / "CMakeLists.txt").read_text(encoding="utf-8")
    code = "\n".join(line for line in tests.splitlines() if not line.lstrip().startswith("#"))
    scripts = re.findall(r"slicer_add_python_unittest\(\s*SCRIPT \$\{CMAKE_CURRENT_SOURCE_DIR\}/([\w.]+)", code)
    # CTest runs the light test (the extension factory's limit is 900 s); the macro adds the module paths itself.
    assert scripts == [f"{module}SelfTest.py"]
    assert "additional-module-path" not in code
    source = (REPO / module / "Testing" / "Python" / scripts[0]).read_text(encoding="utf-8")
    tree = ast.parse(source)
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    test_class = classes[scripts[0][:-3]]
    # A ScriptedLoadableModuleTest, directly or through the self-tests' common frame.
    frame = ast.parse((REPO / "LDFSAMSegment" / "LDFSAMSegmentLib" / "self_test.py").read_text(encoding="utf-8"))
    frame_bases = [c.bases for c in frame.body if isinstance(c, ast.ClassDef) and c.name == "LDFSAMSelfTest"][0]
    assert [getattr(b, "id", None) for b in frame_bases] == ["ScriptedLoadableModuleTest"]
    assert any(getattr(b, "id", None) == "ScriptedLoadableModuleTest"
               or (getattr(b, "attr", None) == "LDFSAMSelfTest" and getattr(b.value, "id", None) == "self_test")
               for b in test_class.bases)
    methods = {n.name for n in test_class.body if isinstance(n, ast.FunctionDef)}
    assert "runTest" in methods and any(m.startswith("test_") for m in methods)
    # The light test neither installs nor downloads anything.
    assert not re.search(r"ensure\(|ensureDependencies\(|downloadModel|pip_install", source)
    # "Reload and Test" runs the light test, then the heavy one.
    module_source = (REPO / module / f"{module}.py").read_text(encoding="utf-8")
    assert re.search(rf'"{module}SelfTest\.py".*"{module}FullTest\.py"', module_source, re.S)
    assert (REPO / module / "Testing" / "Python" / f"{module}FullTest.py").is_file()


def test_catalog_checks_of_the_extensions_index_pass():
    # What the Extensions Index checks (scripts/check_description_files.py), offline, on this repository.
    entry_path = REPO / "LDFSAM.json"
    assert b"\r" not in entry_path.read_bytes()
    entry = json.loads(entry_path.read_text(encoding="utf-8"))
    project = re.search(r"project\s*\(\s*([^\s)]+)", (REPO / "CMakeLists.txt").read_text(encoding="utf-8"))
    assert project.group(1) == entry_path.stem == "LDFSAM"  # the extension's name is the JSON file's name
    assert not entry_path.stem.lower().startswith("slicer")
    assert entry["scm_url"].startswith("https://")
    assert entry["scm_url"].rstrip("/").split("/")[-1].removesuffix(".git").startswith("Slicer")
    # A license file in the repository root: the full Apache-2.0 text, the licence pyproject.toml declares.
    license_text = (REPO / "LICENSE.txt").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text and len(license_text) > 10000
    assert 'license = { text = "Apache-2.0" }' in (REPO / "pyproject.toml").read_text(encoding="utf-8")


def test_the_core_is_installed_once_beside_the_modules_and_train_depends_on_segment():
    cmake = (REPO / "LDFSAMSegment" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "${PROJECT_SOURCE_DIR}/ldfsam/*.py" in cmake and "${PROJECT_SOURCE_DIR}/ldfsam/resources/*" in cmake
    assert re.search(r"ctkMacroCompilePythonScript\(.*SOURCE_DIR \$\{PROJECT_SOURCE_DIR\}.*"
                     r"INSTALL_DIR \$\{Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR\}", cmake, re.S)
    train_cmake = (REPO / "LDFSAMTrain" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "ctkMacroCompilePythonScript" not in train_cmake and "/ldfsam/" not in train_cmake  # installed once
    tree = ast.parse((REPO / "LDFSAMTrain" / "LDFSAMTrain.py").read_text(encoding="utf-8"))
    deps = [n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
            and any(isinstance(t, ast.Attribute) and t.attr == "dependencies" for t in n.targets)]
    assert [ast.literal_eval(d) for d in deps] == [["LDFSAMSegment"]]


def test_icons_are_128_pixel_pngs_and_screenshots_are_real_images():
    from PIL import Image

    for path in [REPO / "Resources" / "Icons" / "LDFSAM.png"] + \
                [REPO / m / "Resources" / "Icons" / f"{m}.png" for m in MODULES]:
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size == (128, 128), path
            assert distinct_colors(img) > 50, f"{path} is nearly blank"
    for m in MODULES:
        with Image.open(REPO / "Resources" / "Screenshots" / f"{m}.png") as img:
            assert img.format == "PNG" and img.size[0] >= 400 and img.size[1] >= 500


def test_requirements_shipped_with_the_module_are_the_core_dependencies():
    tomllib = pytest.importorskip("tomllib")
    sys.path.insert(0, str(REPO / "LDFSAMSegment"))
    from LDFSAMSegmentLib import dependencies, requirements_file

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert dependencies.read_requirements(requirements_file()) == project["dependencies"]


# -- .ui files -------------------------------------------------------------------------------------------------
def _wrapper_fields(module: str) -> dict:
    """Fields of the module's @parameterNodeWrapper class -> "bool", "int", "float", "str", "Path", "Choice",
    "node"."""
    tree = ast.parse((REPO / module / f"{module}Lib" / "parameters.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "parameterNodeWrapper"
                                                  for d in node.decorator_list):
            fields = {}
            for item in node.body:
                if isinstance(item, ast.AnnAssign):
                    text = ast.unparse(item.annotation)
                    kind = "Choice" if "Choice(" in text else text.split("[")[-1].split(",")[0].strip()
                    fields[item.target.id] = "node" if kind.startswith("vtkMRML") else kind
            return fields
    raise AssertionError(f"{module}Lib/parameters.py has no @parameterNodeWrapper class")


def _load_ui(module: str):
    """The module's .ui loaded with the real QUiLoader (offscreen), and its XML."""
    pytest.importorskip("PySide6")
    import xml.etree.ElementTree as ET

    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication

    QApplication.instance() or QApplication([])
    path = REPO / module / "Resources" / "UI" / f"{module}.ui"
    widget = QUiLoader().load(str(path))
    assert widget is not None, path
    return widget, ET.parse(path).getroot()


def _ui_widgets(module: str):
    """(names of the loaded widgets, name -> class in the .ui, {property: {widget name -> parameter}})."""
    from PySide6.QtWidgets import QWidget

    widget, root = _load_ui(module)
    names = {w.objectName() for w in widget.findChildren(QWidget)} | {widget.objectName()}
    # QUiLoader turns the Slicer-only classes into QWidget: the declared class comes from the file.
    classes, params = {}, {PARAMETER_PROPERTY: {}, PATH_PROPERTY: {}}
    for w in root.iter("widget"):
        classes[w.get("name")] = w.get("class")
        for prop in w.findall("property"):
            if prop.get("name") in params:
                params[prop.get("name")][w.get("name")] = prop.find("string").text
    assert set(classes) <= names | {None}
    return names, classes, params


def _widget_sources(module: str) -> str:
    """The code that reaches the module's widgets: its widget (with the sections of its panel, ``*_section.py``)
    and the shared life cycle."""
    lib = REPO / module / f"{module}Lib"
    paths = (lib / "widget.py", *sorted(lib.glob("*_section.py")),
             REPO / "LDFSAMSegment" / "LDFSAMSegmentLib" / "lifecycle.py")
    return "".join(p.read_text(encoding="utf-8") for p in paths)


@pytest.mark.parametrize("module", MODULES)
def test_ui_loads_and_has_every_widget_the_module_uses(module):
    names, _, _ = _ui_widgets(module)
    source = _widget_sources(module)
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    # Widgets reached by name (getattr(self.ui, name) over a tuple of names).
    used |= set(re.findall(r'"(\w+(?:Button|ComboBox|SpinBox|LineEdit|Label|Widget|Edit|Bar|Frame))"', source))
    assert used, "the module uses no widget of its .ui file?"
    assert used - names == set()


@pytest.mark.parametrize("module", MODULES)
def test_ui_parameter_bindings_match_the_parameter_node_wrapper(module):
    _, classes, params = _ui_widgets(module)
    fields = _wrapper_fields(module)
    bound = params[PARAMETER_PROPERTY]
    assert bound, "no widget is bound to the parameter node"
    for widget, field in bound.items():
        assert field in fields, f"{widget} is bound to {field!r}, which the parameter node does not have"
        assert fields[field] in CONNECTABLE[classes[widget]], \
            f"{widget} ({classes[widget]}) cannot show {field} ({fields[field]})"
    # Paths are strings bound by the module: a Path parameter would show "." for an empty path.
    for widget, field in params[PATH_PROPERTY].items():
        assert classes[widget] == "ctkPathLineEdit" and fields.get(field) == "str", (widget, field)
    assert "Path" not in fields.values()
    every = list(bound.values()) + list(params[PATH_PROPERTY].values())
    assert len(set(every)) == len(every), "two widgets bound to one parameter"


@pytest.mark.parametrize("module", MODULES)
def test_binding_finds_the_bound_widgets_of_the_real_ui(module):
    # What the modules connect: the widgets whose dynamic property names a parameter, found on the loaded .ui
    # (Slicer hands the same objects to connectParametersToGui).
    from PySide6.QtWidgets import QWidget

    widget, _ = _load_ui(module)
    _, _, params = _ui_widgets(module)
    children = widget.findChildren(QWidget)
    for prop in (PARAMETER_PROPERTY, PATH_PROPERTY):
        mapping = bound_widgets(children, prop)
        assert {name: w.objectName() for name, w in mapping.items()} == \
            {field: name for name, field in params[prop].items()}
    duplicate = children[0]
    duplicate.setProperty(PARAMETER_PROPERTY, next(iter(params[PARAMETER_PROPERTY].values())))
    with pytest.raises(ValueError, match="set on two widgets"):
        bound_widgets(children, PARAMETER_PROPERTY)


def test_path_text_shows_no_dot_for_an_empty_path():
    from pathlib import Path

    assert [path_text(v) for v in (None, "", ".", Path(""), "/data/cbct", Path("/data/cbct"))] == \
        ["", "", "", "", "/data/cbct", str(Path("/data/cbct"))]


def test_modules_never_use_connect_gui():
    # Slicer 5.8's connectGui returns no tag, so disconnectGui cannot undo it (fixed in 5.10): the modules use
    # connectParametersToGui, which returns one on every version, in exactly one place.
    sources = {p: p.read_text(encoding="utf-8") for m in MODULES for p in (REPO / m).rglob("*.py")}
    assert [str(p) for p, text in sources.items() if re.search(r"\.connectGui\(", text)] == []
    users = [p.name for p, text in sources.items() if "connectParametersToGui(" in text]
    assert users == ["lifecycle.py"]


def test_panels_render_offscreen(tmp_path):
    pytest.importorskip("PySide6")
    sys.path.insert(0, str(REPO / "Resources"))
    import make_images
    from PIL import Image

    make_images.render_segment(tmp_path / "segment.png")
    make_images.render_train(tmp_path / "train.png")
    make_images.make_icon(tmp_path / "icon.png")
    for name in ("segment.png", "train.png"):
        with Image.open(tmp_path / name) as img:
            assert img.size[0] >= 400 and distinct_colors(img) > 20
    with Image.open(tmp_path / "icon.png") as img:
        assert img.size == (128, 128)


def test_plain_python_helpers_need_neither_slicer_nor_qt():
    pattern = re.compile(r"^\s*(import|from)\s+(slicer|qt|ctk|vtk|PySide6)\b", re.M)
    libs = [p for m in MODULES for p in (REPO / m / f"{m}Lib").rglob("*.py")]
    needs_slicer = sorted(f"{p.parent.name}/{p.name}" for p in libs if pattern.search(p.read_text(encoding="utf-8")))
    assert needs_slicer == sorted(f"{lib}/{name}.py" for lib, names in SLICER_LAYER.items() for name in names)
    # The module files are thin: the module description, the classes Slicer looks up, the test runner.
    for m in MODULES:
        assert len((REPO / m / f"{m}.py").read_text(encoding="utf-8").splitlines()) < 80


def test_plain_parts_load_without_the_cores_packages(tmp_path):
    # A fresh Slicer has only what it ships (numpy, SimpleITK, packaging, ...): the panels must still load (model
    # list, dependency check, command lines), which is what the light CTest self-test checks in such a Slicer.
    import subprocess

    blocked = ["torch", "torchvision", "ultralytics", "safetensors", "monai", "scipy", "skimage", "cc3d",
               "slicerio", "nrrd", "yaml", "tqdm", "psutil", "PIL", "tensorboard"]
    code = textwrap.dedent(f"""
        import sys
        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {blocked!r}:
                    raise ImportError("not installed: " + name)
        sys.meta_path.insert(0, Blocker())
        import importlib, pkgutil
        import LDFSAMSegmentLib, LDFSAMTrainLib
        slicer_layer = {SLICER_LAYER!r}
        for package in (LDFSAMSegmentLib, LDFSAMTrainLib):
            for info in pkgutil.iter_modules(package.__path__):
                if info.name not in slicer_layer[package.__name__]:
                    importlib.import_module(package.__name__ + "." + info.name)
        from LDFSAMSegmentLib import dependencies, requirements_file
        from LDFSAMSegmentLib.model_choices import model_choices
        from LDFSAMTrainLib.commands import TrainSettings, prepare_argv
        dependencies.plan(dependencies.read_requirements(requirements_file()))
        print([c.name for c in model_choices()][0], prepare_argv(TrainSettings("data", "out"))[3])
        print(sorted(name for name in {blocked!r} if name in sys.modules))
    """)
    env = dict(os.environ, LDFSAM_HOME=str(tmp_path / "home"))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "LDFSAMSegment"), str(REPO / "LDFSAMTrain"),
                                         os.environ.get("PYTHONPATH", "")])  # the suite's network guard too
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(tmp_path),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["ldfsam-demo prepare", "[]"]


@pytest.mark.parametrize("module", MODULES)
def test_module_file_exposes_the_classes_slicer_looks_up(module):
    tree = ast.parse((REPO / module / f"{module}.py").read_text(encoding="utf-8"))
    names = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    names |= {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    # ScriptedLoadableModule finds <Module>Widget, <Module>Logic and <Module>Test in the module's namespace.
    assert {module, f"{module}Widget", f"{module}Logic", f"{module}Test"} <= names
