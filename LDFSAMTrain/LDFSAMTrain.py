"""LDFSAM Train: train an LDFSAM tooth model on your own CBCT data from 3D Slicer (Slicer 5.8 or later).

Each step (prepare, Phase 1 distillation, Phase 2 fine-tuning, evaluation), or all four at once ("Run all",
``ldfsam train``), runs the core's command line in a background process; its JSON progress events drive the
progress bar and the loss / validation-Dice chart. The module's parts live in ``LDFSAMTrainLib``: ``widget``,
``logic``, ``parameters``, and the plain-Python ``commands`` (command lines and the output folder's layout),
``run_all`` (Run all's command line, progress and report figures), ``curves`` and ``evaluation_table``.
Process handling, progress, dependencies and the widget life cycle come from ``LDFSAMSegmentLib`` (LDFSAM Segment
is this module's dependency).
"""

import os

from LDFSAMTrainLib.logic import LDFSAMTrainLogic  # noqa: F401  (Slicer finds <Module>Logic here)
from LDFSAMTrainLib.parameters import LDFSAMTrainParameterNode  # noqa: F401
from LDFSAMTrainLib.widget import LDFSAMTrainWidget  # noqa: F401  (Slicer finds <Module>Widget here)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest


class LDFSAMTrain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LDFSAM Train")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        # The Segment module installs the ldfsam core and the shared helpers (LDFSAMSegmentLib).
        self.parent.dependencies = ["LDFSAMSegment"]
        self.parent.contributors = ["LDFSAM maintainers (SlicerLDFSAM project)"]
        self.parent.helpText = _(
            "Trains an LDFSAM tooth segmentation model: prepare the data, Phase 1 (YOLOv8 teacher and a student "
            "trained with localization distillation), Phase 2 (SAM fine-tuned with dense and sparse feature "
            "prompts), evaluation, step by step or all at once (Run all, with a report), then use the model in "
            "LDFSAM Segment.")
        self.parent.acknowledgementText = _(
            "Method: LDFSAM, localization-distilled feature prompting of the Segment Anything Model.")


def _loadTestCase(fileName, className):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "Testing", "Python", fileName)
    spec = importlib.util.spec_from_file_location(className, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, className)


class LDFSAMTrainTest(ScriptedLoadableModuleTest):
    """"Reload and Test": the light self-test (also run by CTest), then a tiny training end to end with Stop and
    Resume, which CTest does not run."""

    def runTest(self):
        for fileName, className in (("LDFSAMTrainSelfTest.py", "LDFSAMTrainSelfTest"),
                                    ("LDFSAMTrainFullTest.py", "LDFSAMTrainFullTest")):
            _loadTestCase(fileName, className)().runTest()
