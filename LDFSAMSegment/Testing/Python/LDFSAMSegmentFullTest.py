"""Heavy self-test of LDFSAM Segment, for the module's "Reload and Test" only (CTest runs the light one).

Installs the core's Python packages when they are missing (network, several GB), segments a larger phantom and
checks the overlap with its known teeth, individual teeth, and the panel itself: Segment teeth becomes Cancel
while Slicer keeps processing events, and the result is selected as the output.
"""

import os
import time

import numpy as np
import slicer
from LDFSAMSegmentLib import self_test  # the module, not its class: unittest would collect the class too


class LDFSAMSegmentFullTest(self_test.LDFSAMSelfTest):
    def runTest(self):
        self.runEach(self.test_dependencies_install, self.test_segment_phantom_overlaps_its_teeth,
                     self.test_individual_teeth, self.test_widget_runs_in_the_background)

    def _phantom(self):
        import SimpleITK as sitk

        from ldfsam.data.phantom import make_phantom

        image, labels = make_phantom(shape=(48, 96, 96), spacing=0.5, seed=3)
        imagePath = os.path.join(self.folder, "phantom.nrrd")
        sitk.WriteImage(image, imagePath)
        return slicer.util.loadVolume(imagePath), sitk.GetArrayFromImage(labels)

    def _parameters(self, volume, split=False):
        from LDFSAMSegment import LDFSAMSegmentLogic

        logic = LDFSAMSegmentLogic()
        parameters = logic.getParameterNode()
        parameters.inputVolume = volume
        parameters.outputSegmentation = None
        parameters.model = "ldfsam-demo"
        parameters.device = "CPU"
        parameters.splitTeeth = split
        return logic, parameters

    def test_dependencies_install(self):
        self.delayDisplay("Installing the core's packages (when missing)")
        from LDFSAMSegmentLib.install_logic import InstallLogic

        self.assertTrue(InstallLogic().ensure(askConfirmation=False))
        from LDFSAMSegmentLib import dependencies, requirements_file

        self.assertTrue(dependencies.plan(dependencies.read_requirements(requirements_file())).empty)

    def test_segment_phantom_overlaps_its_teeth(self):
        self.delayDisplay("Segmenting a phantom")
        volume, truth = self._phantom()
        logic, parameters = self._parameters(volume)
        node = logic.segment(parameters, timeoutS=1800)
        segmentation = node.GetSegmentation()
        self.assertTrue(segmentation.ContainsRepresentation(
            slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()))
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentation.GetNthSegmentID(0), volume)
        teeth = truth > 0
        dice = 2.0 * np.logical_and(mask > 0, teeth).sum() / max(1, (mask > 0).sum() + teeth.sum())
        self.delayDisplay(f"Dice against the phantom's teeth: {dice:.3f}")
        self.assertGreater(dice, 0.5)

    def test_individual_teeth(self):
        self.delayDisplay("Individual teeth")
        volume, _ = self._phantom()
        logic, parameters = self._parameters(volume, split=True)
        node = logic.segment(parameters, timeoutS=1800)
        segmentation = node.GetSegmentation()
        self.assertGreater(segmentation.GetNumberOfSegments(), 1)
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        self.assertTrue(all(name.startswith("Tooth ") for name in names), names)
        colors = {tuple(round(c, 3) for c in segmentation.GetNthSegment(i).GetColor()) for i in range(len(names))}
        self.assertEqual(len(colors), len(names))

    def test_widget_runs_in_the_background(self):
        self.delayDisplay("The module panel: Segment teeth becomes Cancel, the result is selected")
        volume, _ = self._phantom()
        slicer.util.selectModule("LDFSAMSegment")
        widget = slicer.modules.ldfsamsegment.widgetRepresentation().self()
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
