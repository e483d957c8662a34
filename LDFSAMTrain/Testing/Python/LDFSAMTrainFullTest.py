"""Heavy self-test of LDFSAM Train, for the module's "Reload and Test" only (CTest runs the light one).

A tiny training run end to end through the module logic, on generated phantoms: prepare, Phase 1 (one epoch of
a YOLOv8n teacher and student), Phase 2 (two epochs of the small SAM preset) stopped once it has saved a state
and then resumed from that state, evaluation, and installing the model for the Segment module. Checks the curve
table and chart fed from the progress events and the evaluation table node. Needs the core's packages.
"""

import time
from pathlib import Path

import slicer
from LDFSAMSegmentLib import self_test  # the module, not its class: unittest would collect the class too


class LDFSAMTrainFullTest(self_test.LDFSAMSelfTest):
    def setUp(self):
        self_test.LDFSAMSelfTest.setUp(self)
        self.folder = Path(self.folder)

    def runTest(self):
        self.runEach(self.test_tiny_training_end_to_end)

    def _dataset(self):
        from ldfsam.data.phantom import write_phantom_dataset

        data = self.folder / "data"
        write_phantom_dataset(data, cases=5, shape=(16, 64, 64), spacing=0.5)
        return data

    def _run(self, logic, parameters, step, resume=False, stopWhen=None):
        """Run one step to its end; ``stopWhen()`` true while it runs: Cancel. Returns (process, state, events)."""
        from LDFSAMSegmentLib.run_state import RunState

        process = logic.stepProcess(step, parameters, resume=resume).start()
        state, events = RunState(), []
        deadline = time.monotonic() + 3600
        try:
            finished = False
            while not finished:
                finished = process.finished  # before the poll: once finished, this poll reads the last lines
                new = process.poll().events
                for event in new:
                    state.feed(event)
                events += new
                if step in ("distill", "finetune") and new:
                    logic.updateCurves(parameters, state.curve)
                if stopWhen is not None and not process.cancelled and process.returncode is None and stopWhen():
                    process.cancel()
                slicer.app.processEvents()
                self.assertLess(time.monotonic(), deadline, f"{step} did not finish")
                time.sleep(0.05)
        finally:
            if not process.finished:  # a failed check: no process is left behind
                process.cancel()
                process.wait(timeout=120)
        return process, state, events

    def _assertSucceeded(self, process, state):
        from LDFSAMSegmentLib.run_state import failure_message

        self.assertIsNone(failure_message(process.returncode, state, process.stderr_tail(), process.cancelled),
                          process.stderr_tail())

    def test_tiny_training_end_to_end(self):
        from LDFSAMSegmentLib.install_logic import InstallLogic
        from LDFSAMSegmentLib.model_choices import model_choices
        from LDFSAMSegmentLib.run_state import failure_message

        from ldfsam.checkpoint import read_document
        from LDFSAMTrain import LDFSAMTrainLogic

        self.assertTrue(InstallLogic().ensure(askConfirmation=False))
        logic = LDFSAMTrainLogic()
        p = logic.getParameterNode()
        p.datasetFolder = str(self._dataset())
        p.outputFolder = str(self.folder / "run")
        p.teacherScale, p.studentScale, p.samPreset = "n", "n", "small"
        p.distillEpochs, p.finetuneEpochs, p.batchSize, p.device = 1, 2, 4, "CPU"

        for step in ("prepare", "distill"):
            self.delayDisplay(f"Step: {step}")
            process, state, _ = self._run(logic, p, step)
            self._assertSucceeded(process, state)
        self.assertTrue(logic.layout(p).prompt_generator.is_file())

        self.delayDisplay("Phase 2, stopped once it has saved a state, then resumed from it")
        statePath = logic.layout(p).phase2 / "state.safetensors"
        process, state, _ = self._run(logic, p, "finetune", stopWhen=statePath.is_file)
        # Stopped while running (the stop condition is checked only while the process lives); the exit status
        # depends on the platform and the launcher, the outcome does not.
        self.assertTrue(process.cancelled)
        self.assertEqual(failure_message(process.returncode, state, process.stderr_tail(), True), "Cancelled.")
        saved = read_document(statePath)["progress"]
        self.assertFalse(saved["complete"])
        self.assertGreater(saved["global_step"], 0)

        process, state, events = self._run(logic, p, "finetune", resume=True)
        self._assertSucceeded(process, state)
        steps = [e["step"] for e in events
                 if e.get("kind") == "progress" and e.get("phase") == "finetune" and e.get("step") is not None]
        self.assertTrue(steps, "the resumed run reported no step")
        self.assertEqual(steps[0], saved["global_step"] + 1)  # continued after the saved step, not from scratch
        finished = read_document(statePath)["progress"]
        self.assertTrue(finished["complete"])
        self.assertGreater(finished["global_step"], saved["global_step"])
        self.assertTrue(logic.layout(p).model.is_file())
        table = p.curveTable.GetTable()
        self.assertGreater(table.GetNumberOfRows(), 0)
        self.assertEqual(p.curveChart.GetNumberOfPlotSeriesNodes(), 2)

        slicer.util.selectModule("LDFSAMTrain")
        widget = slicer.modules.ldfsamtrain.widgetRepresentation().self()
        self.assertEqual(widget.plotWidget.mrmlPlotViewNode().GetPlotChartNodeID(), p.curveChart.GetID())

        self.delayDisplay("Evaluate")
        process, state, _ = self._run(logic, p, "evaluate")
        self._assertSucceeded(process, state)
        evaluation = logic.loadEvaluation(p)
        self.assertGreaterEqual(evaluation.GetNumberOfRows(), 1)
        self.assertIsNotNone(evaluation.GetTable().GetColumnByName("dice"))

        self.delayDisplay("Use for segmentation")
        process = logic.importProcess(p, "selftest-model").start()
        process.wait(timeout=600)
        self.assertEqual(process.returncode, 0, process.stderr_tail())
        self.assertIn("selftest-model", [c.name for c in model_choices(str(self.folder / "home"))])
