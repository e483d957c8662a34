"""Self-test of LDFSAM Train, run inside Slicer (CTest, or the module's "Reload and Test").

A tiny training run end to end through the module logic, on generated phantoms: prepare, Phase 1 (one epoch of
a YOLOv8n teacher and student), Phase 2 (one epoch of the small SAM preset), evaluation, and installing the model
for the Segment module. Checks the curve table and chart fed from the progress events, the evaluation table node,
and that Stop during Phase 2 leaves a run that Resume finishes.
"""

import os
import shutil
import tempfile
import time
from pathlib import Path

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest


class LDFSAMTrainSelfTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()
        self.folder = Path(tempfile.mkdtemp(prefix="LDFSAMTrainTest-"))
        os.environ["LDFSAM_HOME"] = str(self.folder / "home")

    def tearDown(self):
        shutil.rmtree(self.folder, ignore_errors=True)

    def runTest(self):
        self.setUp()
        try:
            self.test_tiny_training_end_to_end()
        finally:
            self.tearDown()

    def _dataset(self):
        from ldfsam.data.phantom import write_phantom_dataset

        data = self.folder / "data"
        write_phantom_dataset(data, cases=5, shape=(16, 64, 64), spacing=0.5)
        return data

    def _run(self, logic, parameters, step, resume=False, stopAfterEvents=None):
        from LDFSAMSegmentLib.run_state import RunState

        process = logic.stepProcess(step, parameters, resume=resume).start()
        state, seen = RunState(), 0
        deadline = time.monotonic() + 3600
        finished = False
        while not finished:
            finished = process.finished  # before the poll: once finished, this poll reads the last lines
            events = process.poll().events
            for event in events:
                state.feed(event)
            seen += len(events)
            if step in ("distill", "finetune") and events:
                logic.updateCurves(parameters, state.curve)
            if stopAfterEvents is not None and seen >= stopAfterEvents and not process.cancelled:
                process.cancel()
            slicer.app.processEvents()
            self.assertLess(time.monotonic(), deadline, f"{step} did not finish")
            time.sleep(0.1)
        return process, state

    def test_tiny_training_end_to_end(self):
        from LDFSAMSegmentLib.model_choices import model_choices

        from LDFSAMSegment import LDFSAMSegmentLogic
        from LDFSAMTrain import LDFSAMTrainLogic

        self.assertTrue(LDFSAMSegmentLogic().ensureDependencies(askConfirmation=False))
        logic = LDFSAMTrainLogic()
        p = logic.getParameterNode()
        p.datasetFolder = self._dataset()
        p.outputFolder = self.folder / "run"
        p.teacherScale, p.studentScale, p.samPreset = "n", "n", "small"
        p.distillEpochs, p.finetuneEpochs, p.batchSize, p.device = 1, 2, 4, "CPU"

        for step in ("prepare", "distill"):
            self.delayDisplay(f"Step: {step}")
            process, state = self._run(logic, p, step)
            self.assertEqual(process.returncode, 0, process.stderr_tail())
            self.assertIsNone(state.error)
        self.assertTrue(logic.layout(p).prompt_generator.is_file())

        self.delayDisplay("Phase 2, stopped after its first events, then resumed")
        process, _ = self._run(logic, p, "finetune", stopAfterEvents=3)
        self.assertIn(process.returncode, (0, 130), process.stderr_tail())
        if process.returncode == 130:
            process, state = self._run(logic, p, "finetune", resume=True)
            self.assertEqual(process.returncode, 0, process.stderr_tail())
        self.assertTrue(logic.layout(p).model.is_file())
        table = p.curveTable.GetTable()
        self.assertGreater(table.GetNumberOfRows(), 0)
        self.assertEqual(p.curveChart.GetNumberOfPlotSeriesNodes(), 2)

        slicer.util.selectModule("LDFSAMTrain")
        widget = slicer.modules.ldfsamtrain.widgetRepresentation().self()
        self.assertEqual(widget.plotWidget.mrmlPlotViewNode().GetPlotChartNodeID(), p.curveChart.GetID())

        self.delayDisplay("Evaluate")
        process, state = self._run(logic, p, "evaluate")
        self.assertEqual(process.returncode, 0, process.stderr_tail())
        evaluation = logic.loadEvaluation(p)
        self.assertGreaterEqual(evaluation.GetNumberOfRows(), 1)
        self.assertIsNotNone(evaluation.GetTable().GetColumnByName("dice"))

        self.delayDisplay("Use for segmentation")
        from LDFSAMSegmentLib.process import BackgroundProcess

        process = BackgroundProcess(*logic.importArgs(p, "selftest-model")).start()
        process.wait(timeout=600)
        self.assertEqual(process.returncode, 0, process.stderr_tail())
        self.assertIn("selftest-model", [c.name for c in model_choices(str(self.folder / "home"))])
