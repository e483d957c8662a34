"""Light self-test of LDFSAM Train, registered with CTest (no network, no install, no training; seconds).

Loads the module and its panel and checks what a real Slicer got wrong before: opening the module adds no node to
the scene, the choices survive the first show and leaving and re-entering the module (Slicer 5.8's connectGui
returned no tag, and stale combo-box connectors reset the teacher scale to "n"), empty path fields stay empty (not
"."), a path typed in the panel reaches the parameter node, and the steps' and Run all's command lines are built
from the panel's values without importing torch into Slicer's process (Run all refuses a folder the steps filled,
and resumes its own run).
The tiny training with Stop and Resume is LDFSAMTrainFullTest.py ("Reload and Test").
"""

import os
import shutil
import sys
import tempfile

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest


class LDFSAMTrainSelfTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()
        self.folder = tempfile.mkdtemp(prefix="LDFSAMTrainTest-")

    def tearDown(self):
        shutil.rmtree(self.folder, ignore_errors=True)

    def runTest(self):
        for test in (self.test_panel_keeps_its_choices_across_module_switches,
                     self.test_paths_are_empty_or_what_was_typed, self.test_step_commands_come_from_the_panel,
                     self.test_run_all_comes_from_the_panel):
            self.setUp()
            try:
                test()
            finally:
                self.tearDown()

    def _widget(self):
        slicer.util.selectModule("LDFSAMTrain")
        return slicer.modules.ldfsamtrain.widgetRepresentation().self()

    def test_panel_keeps_its_choices_across_module_switches(self):
        self.delayDisplay("The panel keeps its choices (paper defaults first) across module switches")
        widget = self._widget()
        p = widget._parameterNode
        # Opening the module adds nothing to the user's scene: the curve nodes come with a run's first curve point.
        for cls in ("vtkMRMLTableNode", "vtkMRMLPlotChartNode", "vtkMRMLPlotSeriesNode", "vtkMRMLPlotViewNode"):
            self.assertEqual(len(slicer.util.getNodesByClass(cls)), 0, cls)
        self.assertEqual((p.teacherScale, p.studentScale, p.samPreset, p.device), ("auto", "n", "vit_b", "auto"))
        self.assertEqual(widget.ui.teacherScaleComboBox.currentText, "auto")
        p.studentScale, p.samPreset, p.device = "s", "small", "CPU"
        for _ in range(3):
            slicer.util.selectModule("Data")
            slicer.util.selectModule("LDFSAMTrain")
        p = widget._parameterNode
        self.assertEqual((p.teacherScale, p.studentScale, p.samPreset, p.device), ("auto", "s", "small", "CPU"))
        self.assertEqual(widget.ui.studentScaleComboBox.currentText, "s")
        widget.ui.teacherScaleComboBox.currentText = "m"
        self.assertEqual(widget._parameterNode.teacherScale, "m")

    def test_paths_are_empty_or_what_was_typed(self):
        self.delayDisplay("Empty path fields stay empty; a typed path reaches the parameter node")
        widget = self._widget()
        for name in ("datasetPathLineEdit", "outputPathLineEdit", "samCheckpointPathLineEdit"):
            self.assertEqual(getattr(widget.ui, name).currentPath, "", name)
        self.assertFalse(widget.ui.prepareButton.enabled)
        widget.ui.datasetPathLineEdit.currentPath = self.folder
        widget.ui.outputPathLineEdit.currentPath = os.path.join(self.folder, "run")
        p = widget._parameterNode
        self.assertEqual((p.datasetFolder, p.outputFolder), (self.folder, os.path.join(self.folder, "run")))
        self.assertTrue(widget.ui.prepareButton.enabled)
        p.outputFolder = ""
        self.assertEqual(widget.ui.outputPathLineEdit.currentPath, "")
        self.assertFalse(widget.ui.prepareButton.enabled)

    def test_step_commands_come_from_the_panel(self):
        self.delayDisplay("Step command lines")
        widget = self._widget()
        p = widget._parameterNode
        p.datasetFolder, p.outputFolder = self.folder, os.path.join(self.folder, "run")
        p.annotationBudget, p.device, p.finetuneEpochs = 20, "auto", 7
        hadTorch = "torch" in sys.modules
        process = widget.logic.stepProcess("finetune", p)
        argv = process.argv
        self.assertEqual(argv[1:4], ["-m", "ldfsam", "finetune"])
        self.assertEqual(argv[argv.index("--budget") + 1], "0.2")
        self.assertEqual(argv[argv.index("--epochs") + 1], "7")
        self.assertEqual(argv[argv.index("--device") + 1], "auto")
        self.assertIsNone(process.process)  # built, not started
        self.assertEqual("torch" in sys.modules, hadTorch)
        p.outputFolder = ""
        with self.assertRaises(ValueError):
            widget.logic.stepProcess("prepare", p)

    def test_run_all_comes_from_the_panel(self):
        self.delayDisplay("Run all: a new run, a refused folder, Resume all")
        widget = self._widget()
        p = widget._parameterNode
        run = os.path.join(self.folder, "run")
        p.datasetFolder, p.outputFolder, p.finetuneEpochs = self.folder, run, 7
        hadTorch = "torch" in sys.modules
        process, resumed = widget.logic.runAllProcess(p)
        self.assertFalse(resumed)
        self.assertEqual(process.argv[1:4], ["-m", "ldfsam", "train"])
        self.assertEqual(process.argv[process.argv.index("--phase2-epochs") + 1], "7")
        self.assertIsNone(process.process)  # built, not started
        self.assertEqual(widget.ui.runAllButton.text, "Run all")
        self.assertTrue(widget.ui.runAllButton.enabled)
        os.makedirs(os.path.join(run, "prepared"))
        with self.assertRaises(ValueError) as refused:
            widget.logic.runAllProcess(p)
        self.assertIn("is not empty", str(refused.exception))
        self.assertIn(run + "-all", str(refused.exception))
        with open(os.path.join(run, "train.json"), "w") as f:
            f.write("{}")
        p.outputFolder = ""
        p.outputFolder = run  # the panel reads the folder again
        self.assertEqual(widget.ui.runAllButton.text, "Resume all")
        process, resumed = widget.logic.runAllProcess(p)
        self.assertTrue(resumed)
        self.assertIn("--resume", process.argv)
        self.assertEqual("torch" in sys.modules, hadTorch)
        self.assertFalse(widget.ui.openReportButton.enabled)  # no report.html yet
