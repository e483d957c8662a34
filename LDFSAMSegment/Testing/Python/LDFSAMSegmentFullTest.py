"""Heavy self-test of LDFSAM Segment, for the module's "Reload and Test" only (CTest runs the light one).

Installs the core's Python packages when they are missing (network, several GB), segments a larger phantom and
checks the overlap with its known teeth, individual teeth, and the panel itself: Segment teeth becomes Cancel
while Slicer keeps processing events, and the result is selected as the output. The Interactive section's Slicer
calls on a volume under a transform (its segmentation, masks filled in place, world points into the volume's
frame, placed points only), and closing the scene during a run. "Add to training set" on a result with one segment
erased in part: the case's label map on the volume's grid, that segment recorded as edited, the others as automatic.
"""

import os
import time

import numpy as np
import slicer
from LDFSAMSegmentLib import self_test  # the module, not its class: unittest would collect the class too


class LDFSAMSegmentFullTest(self_test.LDFSAMSelfTest):
    def runTest(self):
        self.runEach(self.test_dependencies_install, self.test_segment_phantom_overlaps_its_teeth,
                     self.test_individual_teeth, self.test_widget_runs_in_the_background,
                     self.test_interactive_results_of_a_transformed_volume_go_in_place,
                     self.test_closing_the_scene_cancels_a_run, self.test_training_case_of_an_edited_result)

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

    def _mask(self, image, cube):
        """A worker-style mask file (1 = structure) on the image's grid: ``cube`` = (z0, z1, y0, y1, x0, x1)."""
        import SimpleITK as sitk

        array = np.zeros(sitk.GetArrayFromImage(image).shape, np.uint8)
        if cube:
            z0, z1, y0, y1, x0, x1 = cube
            array[z0:z1, y0:y1, x0:x1] = 1
        mask = sitk.GetImageFromArray(array)
        mask.CopyInformation(image)
        path = os.path.join(self.folder, f"mask-{len(os.listdir(self.folder))}.nii.gz")
        sitk.WriteImage(mask, path)
        return path, int(array.sum())

    def test_interactive_results_of_a_transformed_volume_go_in_place(self):
        self.delayDisplay("Interactive: a transformed volume's segmentation, masks filled in place")
        import SimpleITK as sitk
        import vtk
        from LDFSAMSegmentLib.interactive_logic import InteractiveLogic, segmentationFor, worldToVolume
        from LDFSAMSegmentLib.prompts import placed_points

        volume, _ = self._phantom()
        image = sitk.ReadImage(os.path.join(self.folder, "phantom.nrrd"))  # the volume's own frame
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        matrix = vtk.vtkMatrix4x4()
        matrix.SetElement(0, 0, 0.0)
        matrix.SetElement(0, 1, -1.0)
        matrix.SetElement(1, 0, 1.0)
        matrix.SetElement(1, 1, 0.0)
        matrix.SetElement(0, 3, 40.0)
        matrix.SetElement(1, 3, -25.0)
        transform.SetMatrixTransformToParent(matrix)
        volume.SetAndObserveTransformNodeID(transform.GetID())
        # World -> the volume's frame undoes the transform.
        local = [3.0, 5.0, 7.0]
        world = list(matrix.MultiplyPoint(local + [1.0])[:3])
        np.testing.assert_allclose(worldToVolume(volume)(world), local, atol=1e-6)
        # One segmentation per volume, under the volume's transform, found again by reference.
        seg = segmentationFor(volume)
        self.assertEqual(seg.GetTransformNodeID(), transform.GetID())
        self.assertIs(segmentationFor(volume, None), seg)
        other, _ = self._phantom()
        otherSeg = segmentationFor(other, seg)
        self.assertIsNot(otherSeg, seg)
        self.assertIs(segmentationFor(volume, otherSeg), seg)
        # A segment is made once and refilled in place: same ID and place, the user's colour kept.
        path, count = self._mask(image, (10, 20, 30, 50, 30, 50))
        InteractiveLogic.loadMask(path, volume, seg, "Tooth 21")
        InteractiveLogic.loadMask(self._mask(image, (5, 8, 5, 9, 5, 9))[0], volume, seg, "Tooth 22")
        segmentation = seg.GetSegmentation()
        first = segmentation.GetSegmentIdBySegmentName("Tooth 21")
        segmentation.GetSegment(first).SetColor(0.1, 0.2, 0.3)
        path, count = self._mask(image, (12, 22, 30, 52, 30, 52))
        InteractiveLogic.loadMask(path, volume, seg, "Tooth 21")
        self.assertEqual(segmentation.GetNumberOfSegments(), 2)
        self.assertEqual(segmentation.GetNthSegmentID(0), first)
        np.testing.assert_allclose(segmentation.GetSegment(first).GetColor(), (0.1, 0.2, 0.3), atol=1e-6)
        array = slicer.util.arrayFromSegmentBinaryLabelmap(seg, first, volume)
        self.assertEqual(int((array > 0).sum()), count)  # the volume's own voxels: no resampling
        # An empty result leaves an empty segment, not a deleted one.
        InteractiveLogic.loadMask(self._mask(image, None)[0], volume, seg, "Tooth 21")
        self.assertEqual(segmentation.GetSegmentIdBySegmentName("Tooth 21"), first)
        self.assertEqual(int((slicer.util.arrayFromSegmentBinaryLabelmap(seg, first, volume) > 0).sum()), 0)
        # Only placed points are prompts.
        points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        points.AddControlPointWorld(world)
        points.AddControlPointWorld([0.0, 0.0, 0.0])
        points.UnsetNthControlPointPosition(1)
        placed = placed_points(points, slicer.vtkMRMLMarkupsNode.PositionDefined, worldToVolume(volume))
        self.assertEqual(len(placed), 1)
        np.testing.assert_allclose(placed[0], local, atol=1e-6)

    def test_closing_the_scene_cancels_a_run(self):
        self.delayDisplay("Closing the scene during a run cancels it; nothing is loaded into the new scene")
        volume, _ = self._phantom()
        slicer.util.selectModule("LDFSAMSegment")
        widget = slicer.modules.ldfsamsegment.widgetRepresentation().self()
        widget.ui.inputVolumeSelector.setCurrentNode(volume)
        widget.ui.deviceComboBox.currentText = "CPU"
        names = [c.name for c in widget._choices]
        widget.ui.modelComboBox.currentIndex = names.index("ldfsam-demo")
        widget.onSegmentButton()
        process = widget.run.process
        slicer.mrmlScene.Clear()
        deadline = time.monotonic() + 120
        while widget.run is not None:
            slicer.app.processEvents()
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.05)
        self.assertTrue(process.cancelled)
        self.assertFalse(process.group_alive())
        self.assertEqual(widget.ui.statusLabel.text, "Cancelled: the scene was closed.")
        self.assertEqual(len(slicer.util.getNodesByClass("vtkMRMLSegmentationNode")), 0)
        self.assertEqual(widget.ui.segmentButton.text, "Segment teeth")

    def test_training_case_of_an_edited_result(self):
        self.delayDisplay("Add to training set: an edited segment is recorded as edited")
        import json

        import SimpleITK as sitk
        from LDFSAMSegmentLib.run_state import RunState, failure_message
        from LDFSAMSegmentLib.training_logic import TrainingSetLogic
        from LDFSAMSegmentLib.training_set import REVIEW_CHOICES

        volume, _ = self._phantom()
        logic, parameters = self._parameters(volume, split=True)
        node = logic.segment(parameters, timeoutS=1800)
        segmentation = node.GetSegmentation()
        ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        self.assertGreater(len(ids), 1)
        edited = slicer.util.arrayFromSegmentBinaryLabelmap(node, ids[0], volume)
        edited[: edited.shape[0] // 2] = 0  # the user erased half of the first tooth
        slicer.util.updateSegmentBinaryLabelmapFromArray(edited, node, ids[0], volume)
        kept = slicer.util.arrayFromSegmentBinaryLabelmap(node, ids[1], volume)
        training = os.path.join(self.folder, "cases")
        case = TrainingSetLogic()
        process, plan = case.addCaseProcess(volume, node, None, training, REVIEW_CHOICES[1], "")
        self.assertEqual([s.origin for s in plan.segments], ["edited"] + ["automatic"] * (len(ids) - 1))
        process.start()
        state, deadline = RunState(), time.monotonic() + 600
        while not process.finished:
            for event in process.poll().events:
                state.feed(event)
            slicer.app.processEvents()
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.05)
        self.assertIsNone(failure_message(process.returncode, state, process.stderr_tail(), process.cancelled),
                          process.stderr_tail())
        case.discard()
        with open(os.path.join(training, f"{case.caseId}.review.json"), encoding="utf-8") as f:
            record = json.load(f)
        self.assertEqual(record["reviewed"]["structures"], [1])
        self.assertEqual(record["structures"]["1"]["origin"], "edited")
        self.assertEqual(record["structures"]["2"]["origin"], "automatic")
        labels = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(training, f"{case.caseId}_label.nii.gz")))
        self.assertEqual(labels.shape, slicer.util.arrayFromVolume(volume).shape)
        self.assertEqual(int((labels == 1).sum()), int((edited > 0).sum()))
        self.assertEqual(int((labels == 2).sum()), int((kept > 0).sum()))
