"""Light self-test of LDFSAM Segment, registered with CTest (no network, no install, a minute or two).

Loads the module and its panel, checks that the choices survive leaving and re-entering the module (Slicer 5.8's
connectGui returned no tag; stale connectors used to reset them), segments the CBCT phantom bundled with the core
with the bundled demo model through the logic (a real background ``ldfsam segment`` process, seconds on a CPU),
checks the result against the phantom's bundled truth, and cancels a run. The
segmentation parts need the core's Python packages: when this Slicer lacks them they are skipped (this test
installs nothing). The heavy checks are in LDFSAMSegmentFullTest.py ("Reload and Test").
"""

import os
import time

import slicer
from LDFSAMSegmentLib import self_test  # the module, not its class: unittest would collect the class too


def dependenciesMissing():
    """What the core still needs in this Slicer's Python (an empty list when everything is installed)."""
    from LDFSAMSegmentLib import dependencies, requirements_file

    plan = dependencies.plan(dependencies.read_requirements(requirements_file()))
    return plan.torch + plan.pip


class LDFSAMSegmentSelfTest(self_test.LDFSAMSelfTest):
    def runTest(self):
        self.runEach(self.test_panel_keeps_its_choices_across_module_switches, self.test_segment_phantom,
                     self.test_cancel_leaves_nothing_behind)

    def _requireCore(self):
        missing = dependenciesMissing()
        if missing:
            self.skipTest(f"the core's packages are not installed in this Slicer ({', '.join(missing)})")

    def _phantom(self):
        """The phantom bundled with the core (what ``ldfsam demo`` segments) and its truth (z, y, x)."""
        import SimpleITK as sitk

        from ldfsam.models.registry import RESOURCES

        demo = RESOURCES / "demo"
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(demo / "phantom_labels.nii.gz")))
        return slicer.util.loadVolume(str(demo / "phantom.nii.gz")), truth

    def _parameters(self, volume):
        from LDFSAMSegment import LDFSAMSegmentLogic

        logic = LDFSAMSegmentLogic()
        parameters = logic.getParameterNode()
        parameters.inputVolume = volume
        parameters.outputSegmentation = None
        parameters.model = "ldfsam-demo"
        parameters.device = "CPU"
        parameters.splitTeeth = False
        return logic, parameters

    def test_panel_keeps_its_choices_across_module_switches(self):
        self.delayDisplay("The panel keeps its choices when the module is left and entered again")
        slicer.util.selectModule("LDFSAMSegment")
        widget = slicer.modules.ldfsamsegment.widgetRepresentation().self()
        p = widget._parameterNode
        p.device, p.sliceSpacing, p.threshold = "CPU", "native", 0.35
        for _ in range(3):
            slicer.util.selectModule("Data")
            slicer.util.selectModule("LDFSAMSegment")
        p = widget._parameterNode
        self.assertEqual((p.device, p.sliceSpacing, p.threshold), ("CPU", "native", 0.35))
        self.assertEqual(widget.ui.deviceComboBox.currentText, "CPU")
        self.assertEqual(widget.ui.sliceSpacingComboBox.currentText, "native")
        # The widget still drives the node (a connection that was really made, once).
        widget.ui.deviceComboBox.currentText = "GPU"
        self.assertEqual(widget._parameterNode.device, "GPU")
        self.assertIn("ldfsam-demo", [c.name for c in widget._choices])
        # A new scene gets a new parameter node, bound in place of the old one.
        slicer.mrmlScene.Clear()
        self.assertIsNotNone(widget._parameterNode)
        widget.ui.sliceSpacingComboBox.currentText = "2px"
        self.assertEqual(widget._parameterNode.sliceSpacing, "2px")

    def test_segment_phantom(self):
        self._requireCore()
        self.delayDisplay("Segmenting a phantom with the bundled demo model")
        volume, truth = self._phantom()
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        study = shNode.CreateStudyItem(shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Patient"), "Study")
        shNode.SetItemParent(shNode.GetItemByDataNode(volume), study)
        logic, parameters = self._parameters(volume)
        node = logic.segment(parameters, timeoutS=240)

        segmentation = node.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 1)
        segment = segmentation.GetNthSegment(0)
        self.assertEqual(segment.GetName(), "Tooth")
        self.assertIn("38199008", segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName()))
        self.assertEqual(shNode.GetItemParent(shNode.GetItemByDataNode(node)), study)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentation.GetNthSegmentID(0), volume) > 0
        self.assertEqual(mask.shape, truth.shape)
        teeth = truth > 0
        dice = 2.0 * (mask & teeth).sum() / max(1, mask.sum() + teeth.sum())
        self.delayDisplay(f"Dice against the phantom's truth: {dice:.3f}")
        self.assertGreater(dice, 0.8)  # `ldfsam demo` reports 0.94 for the same phantom and model
        # The temporary files are gone, and nothing points at them: a fresh storage node with no file yet.
        self.assertIsNone(logic.pendingFolder)
        storage = node.GetStorageNode()
        self.assertIsNotNone(storage)
        self.assertFalse(storage.GetFileName())
        self.assertEqual(len(slicer.util.getNodesByClass("vtkMRMLSegmentationNode")), 1)

    def test_cancel_leaves_nothing_behind(self):
        self._requireCore()
        self.delayDisplay("Cancel")
        from LDFSAMSegmentLib.run_state import RunState, failure_message

        volume, _ = self._phantom()
        logic, parameters = self._parameters(volume)
        parameters.sliceSpacing = "native"  # every slice: the run lasts long enough for Cancel to arrive first
        process = logic.startSegmentation(parameters, start=True)
        outputPath, folder = logic.pendingOutputPath, logic.pendingFolder
        state = RunState()
        deadline = time.monotonic() + 240
        while state.phase != "segment" or state.percent == 0:
            for event in process.poll().events:
                state.feed(event)
            self.assertIsNone(process.returncode, process.stderr_tail())
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.02)
        process.cancel()
        process.wait(timeout=60)
        # In Slicer the child is the PythonSlicer launcher: its exit status after Cancel depends on the platform
        # (-15, or 1 from taskkill on Windows), so the outcome is checked, not the number.
        self.assertTrue(process.cancelled)
        self.assertEqual(failure_message(process.returncode, state, process.stderr_tail(), process.cancelled),
                         "Cancelled.")
        self.assertFalse(process.group_alive())
        self.assertFalse(os.path.exists(outputPath))
        logic.discardRun()
        self.assertFalse(os.path.exists(folder))
