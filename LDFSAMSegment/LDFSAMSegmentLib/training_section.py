"""The panel's Training set section: add the volume and its reviewed segments to a training set, improve the
model from it in the background, and switch to the new model (Slicer layer).

A part of ``LDFSAMSegmentWidget`` (``widget``), which provides ``ui``, ``_parameterNode``, ``_choices``,
``_training``, ``_improving``, ``run``, ``startRun``, ``selectedChoice``, ``refreshModels`` and
``ensureDependencies``.
"""

import slicer
from slicer.i18n import tr as _

from .parameters import cacheFolder


class TrainingSetSection:
    """The Training set section's handlers."""

    def trainingLogic(self):
        from .training_logic import TrainingSetLogic

        self._training = self._training or TrainingSetLogic()
        return self._training

    def updateTrainingButtons(self, running, busy):
        from .bindings import path_text
        from .training_set import REVIEW_CHOICES

        p = self._parameterNode
        folder = bool(p and path_text(p.trainingFolder))
        self.ui.addToTrainingSetButton.enabled = bool(folder and p.inputVolume and not busy)
        self.ui.reviewedSlicesLineEdit.enabled = bool(p and p.reviewed == REVIEW_CHOICES[2])
        name = p.newModelName.strip() if p else ""
        installed = {c.name for c in self._choices if c.state != "available"}
        if self._improving is not None:
            self.ui.improveModelButton.text = _("Cancel improving '{name}'").format(name=self._improving)
            self.ui.improveModelButton.enabled = True
        else:
            # A run of that name that was started and not installed yet (cancelled, or it crashed) continues.
            resumable = bool(name) and name not in installed and self._improveRunStarted(name)
            self.ui.improveModelButton.text = (_("Resume improving '{name}'").format(name=name) if resumable
                                               else _("Improve model from my training set"))
            self.ui.improveModelButton.enabled = bool(folder and name and self.selectedChoice() and not busy)
        self.ui.useNewModelButton.enabled = bool(p and p.improvedModel in installed and p.model != p.improvedModel)

    def _improveRunStarted(self, name):
        from .training_set import can_resume

        try:
            return can_resume(self.trainingLogic().improveRun(name, cacheFolder()))
        except Exception:  # a name the core refuses: the button's run says why
            return False

    def onAddToTrainingSet(self):
        from .bindings import path_text

        if self.run is not None or not self.ensureDependencies():
            return
        p = self._parameterNode
        folder = path_text(p.trainingFolder)
        try:
            process, plan = self.trainingLogic().addCaseProcess(
                p.inputVolume, p.outputSegmentation, p.interactiveSegmentation, folder, p.reviewed,
                p.reviewedSlices, cacheFolder())
        except Exception as e:
            slicer.util.errorDisplay(_("Could not add the volume to the training set: {error}").format(error=e))
            return
        caseId = self._training.caseId
        origins = [s.origin for s in plan.segments]
        counts = ", ".join(f"{origins.count(o)} {o}" for o in ("automatic", "prompted", "edited") if o in origins)

        def done():
            self._training.discard()
            self.ui.statusLabel.text = _("Added '{case}' to {folder} ({counts} segment(s)).").format(
                case=caseId, folder=folder, counts=counts)

        self.startRun(process, done)

    def onImproveModel(self):
        from .bindings import path_text

        if self._improving is not None:
            self.ui.statusLabel.text = _("Cancelling (the run keeps its last saved state; the button resumes it)...")
            self.run.cancel()
            return
        if self.run is not None or not self.ensureDependencies():
            return
        p = self._parameterNode
        name, choice = p.newModelName.strip(), self.selectedChoice()
        try:
            process, resumed = self.trainingLogic().improveProcess(
                path_text(p.trainingFolder), choice.name if choice else "", name, p.device, cacheFolder())
        except Exception as e:
            slicer.util.errorDisplay(_("Could not start improving the model: {error}").format(error=e))
            return

        def done():
            p.improvedModel = name
            self.refreshModels()
            self.ui.statusLabel.text = _("'{name}' is installed: press \"Use the new model\" to segment with "
                                         "it.").format(name=name)

        self._improving = name
        self.startRun(process, done)
        if resumed:
            self.ui.statusLabel.text = _("Resuming the improvement of '{name}'...").format(name=name)

    def onUseNewModel(self):
        p = self._parameterNode
        p.model = p.improvedModel
        self.refreshModels()  # selects the parameter node's model
        self.ui.statusLabel.text = _("Segmenting with '{name}'.").format(name=p.model)
