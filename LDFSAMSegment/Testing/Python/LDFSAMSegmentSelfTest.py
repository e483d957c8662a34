"""Self-test of LDFSAM Segment, run inside Slicer (CTest, or the module's "Reload and Test").

Segments a generated CBCT phantom with the bundled demo model through the module logic (a real background
``ldfsam segment`` process) and checks the segmentation node: geometry, names, colours, terminology, place in
the subject hierarchy, 3D display, and overlap with the phantom's known teeth. Then checks that Cancel stops a
run and leaves no result behind.
"""

import os
import shutil
import tempfile
import time

import numpy as np
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest


class LDFSAMSegmentSelfTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()
        self.folder = tempfile.mkdtemp(prefix="LDFSAMSegmentTest-")
        os.environ["LDFSAM_HOME"] = os.path.join(self.folder, "home")

    def tearDown(self):
        shutil.rmtree(self.folder, ignore_errors=True)

    def runTest(self):
        for test in (self.test_segment_phantom, self.test_individual_teeth, self.test_cancel,
                     self.test_widget_runs_in_the_background):
            self.setUp()
            try:
                test()
            finally:
                self.tearDown()

    def _phantom(self):
        import SimpleITK as sitk

        from ldfsam.data.phantom import make_phantom

        image, labels = make_phantom(shape=(48, 96, 96), spacing=0.5, seed=3)
        imagePath = os.path.join(self.folder, "phantom.nrrd")
        sitk.WriteImage(image, imagePath)
        volume = slicer.util.loadVolume(imagePath)
        return volume, sitk.GetArrayFromImage(labels)

    def _parameters(self, volume, split=False):
        from LDFSAMSegment import LDFSAMSegmentLogic

        logic = LDFSAMSegmentLogic()
        self.assertTrue(logic.ensureDependencies(askConfirmation=False))
        parameters = logic.getParameterNode()
        parameters.inputVolume = volume
        parameters.outputSegmentation = None
        parameters.model = "ldfsam-demo"
        parameters.device = "CPU"
        parameters.splitTeeth = split
        return logic, parameters

    def test_segment_phantom(self):
        self.delayDisplay("Segmenting a phantom")
        volume, truth = self._phantom()
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        study = shNode.CreateStudyItem(shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Patient"), "Study")
        shNode.SetItemParent(shNode.GetItemByDataNode(volume), study)

        logic, parameters = self._parameters(volume)
        node = logic.segment(parameters, timeoutS=1800)

        self.assertEqual(node.GetClassName(), "vtkMRMLSegmentationNode")
        segmentation = node.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 1)
        segment = segmentation.GetNthSegment(0)
        self.assertEqual(segment.GetName(), "Tooth")
        term = segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName())
        self.assertIn("38199008", term)
        self.assertEqual(shNode.GetItemParent(shNode.GetItemByDataNode(node)), study)
        self.assertTrue(node.GetSegmentation().ContainsRepresentation(
            slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()))
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentation.GetNthSegmentID(0), volume)
        self.assertEqual(mask.shape, truth.shape)
        teeth = truth > 0
        dice = 2.0 * np.logical_and(mask > 0, teeth).sum() / max(1, (mask > 0).sum() + teeth.sum())
        self.delayDisplay(f"Dice against the phantom's teeth: {dice:.3f}")
        self.assertGreater(dice, 0.5)
        # The temporary input and output files are gone.
        self.assertIsNone(logic._pending)

    def test_individual_teeth(self):
        self.delayDisplay("Individual teeth")
        volume, truth = self._phantom()
        logic, parameters = self._parameters(volume, split=True)
        node = logic.segment(parameters, timeoutS=1800)
        segmentation = node.GetSegmentation()
        self.assertGreater(segmentation.GetNumberOfSegments(), 1)
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        self.assertTrue(all(name.startswith("Tooth ") for name in names), names)
        colors = {tuple(round(c, 3) for c in segmentation.GetNthSegment(i).GetColor()) for i in range(len(names))}
        self.assertEqual(len(colors), len(names))

    def test_cancel(self):
        self.delayDisplay("Cancel")
        volume, _ = self._phantom()
        logic, parameters = self._parameters(volume)
        process = logic.startSegmentation(parameters, start=True)
        outputPath = logic._pending[2]
        deadline = time.monotonic() + 600
        while not any(e["kind"] == "progress" for e in process.poll().events):
            self.assertIsNone(process.returncode, process.stderr_tail())
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.05)
        process.cancel()
        while not process.finished:
            process.poll()
            time.sleep(0.05)
        self.assertEqual(process.returncode, 130, process.stderr_tail())
        self.assertFalse(os.path.exists(outputPath))
        logic.discardRun()

    def test_widget_runs_in_the_background(self):
        self.delayDisplay("The module panel: Segment teeth becomes Cancel, the result is selected")
        volume, _ = self._phantom()
        slicer.util.selectModule("LDFSAMSegment")
        widget = slicer.modules.ldfsamsegment.widgetRepresentation().self()
        self.assertTrue(widget.logic.ensureDependencies(askConfirmation=False))
        widget.ui.inputVolumeSelector.setCurrentNode(volume)
        widget.ui.deviceComboBox.currentText = "CPU"
        names = [c.name for c in widget._choices]
        widget.ui.modelComboBox.currentIndex = names.index("ldfsam-demo")
        self.assertTrue(widget.ui.segmentButton.enabled)
        widget.onSegmentButton()
        self.assertEqual(widget.ui.segmentButton.text, "Cancel")
        self.assertFalse(widget.ui.optionsCollapsibleButton.enabled)
        deadline = time.monotonic() + 1800
        while widget.run is not None:
            slicer.app.processEvents()  # the GUI keeps working while the process runs
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.05)
        self.assertEqual(widget.ui.segmentButton.text, "Segment teeth")
        self.assertTrue(widget.ui.statusLabel.text.startswith("Done"), widget.ui.statusLabel.text)
        self.assertEqual(widget.ui.progressBar.value, 100)
        node = widget._parameterNode.outputSegmentation
        self.assertIsNotNone(node)
        self.assertEqual(node.GetSegmentation().GetNthSegment(0).GetName(), "Tooth")
