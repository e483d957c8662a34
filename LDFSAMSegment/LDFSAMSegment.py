"""LDFSAM Segment: tooth segmentation of dental CBCT in 3D Slicer (Slicer 5.8 or later).

The work runs in a background ``python -m ldfsam segment`` process (Slicer stays responsive); its JSON progress
events drive the progress bar, and its ``.seg.nrrd`` result becomes a segmentation node. The module's parts live
in ``LDFSAMSegmentLib``: ``widget`` (the panel), ``logic``, ``install_logic`` (first-use packages),
``parameters``, ``lifecycle`` (shared with LDFSAM Train), and plain-Python helpers tested outside Slicer.
"""

import os

from LDFSAMSegmentLib.logic import LDFSAMSegmentLogic  # noqa: F401  (Slicer finds <Module>Logic here)
from LDFSAMSegmentLib.parameters import LDFSAMSegmentParameterNode  # noqa: F401
from LDFSAMSegmentLib.widget import LDFSAMSegmentWidget  # noqa: F401  (Slicer finds <Module>Widget here)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest


class LDFSAMSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LDFSAM Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LDFSAM maintainers (SlicerLDFSAM project)"]
        self.parent.helpText = _(
            "Finds the teeth in a dental cone-beam CT (CBCT) scan and outlines each of them as a 3D segment. Choose "
            "the scan and a model, then click <b>Segment teeth</b>; Slicer stays usable while it works. Where a "
            "tooth is wrong, draw a box around it (Interactive) and add a few clicks. For research use; not a "
            "medical device. The first use installs PyTorch and other packages (ultralytics is AGPL-3.0). "
            "See <a href=\"https://github.com/LDFSAM/SlicerLDFSAM/blob/main/docs/slicer.md\">the documentation</a>.")
        self.parent.acknowledgementText = _(
            "Method: LDFSAM, localization-distilled feature prompting of the Segment Anything Model.")


def _loadTestCase(fileName, className):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "Testing", "Python", fileName)
    spec = importlib.util.spec_from_file_location(className, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, className)


class LDFSAMSegmentTest(ScriptedLoadableModuleTest):
    """"Reload and Test": the light self-test (also run by CTest), then the heavy one (panel, individual teeth,
    dependency check), which CTest does not run."""

    def runTest(self):
        for fileName, className in (("LDFSAMSegmentSelfTest.py", "LDFSAMSegmentSelfTest"),
                                    ("LDFSAMSegmentFullTest.py", "LDFSAMSegmentFullTest")):
            _loadTestCase(fileName, className)().runTest()
