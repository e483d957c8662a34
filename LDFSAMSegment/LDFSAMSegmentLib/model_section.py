"""The panel's model section: the installed and downloadable models, the cache folder and the device (Slicer layer).

A part of ``LDFSAMSegmentWidget`` (``widget``), which provides ``ui``, ``_parameterNode``, ``logic``, ``_choices``,
``startRun`` and ``updateButtons``.
"""

import qt
from slicer.i18n import tr as _

from .parameters import cacheFolder, setCacheFolder, setLastDevice


class ModelSection:
    """The model section's handlers."""

    def refreshModels(self):
        from .model_choices import model_choices

        self._choices = model_choices(cacheFolder())
        wanted = self._parameterNode.model if self._parameterNode else None
        names = [c.name for c in self._choices]
        combo = self.ui.modelComboBox
        blocked = combo.blockSignals(True)
        combo.clear()
        for choice in self._choices:
            combo.addItem(choice.label, choice.name)
        combo.currentIndex = names.index(wanted) if wanted in names else 0
        combo.blockSignals(blocked)
        self.refreshPriors()
        self.onModelChanged()

    def selectedChoice(self):
        index = self.ui.modelComboBox.currentIndex
        return self._choices[index] if 0 <= index < len(self._choices) else None

    def onModelChanged(self, *_args):
        choice = self.selectedChoice()
        self.ui.modelDescriptionLabel.text = choice.description if choice else _("No model installed.")
        if choice and self._parameterNode and self._parameterNode.model != choice.name:
            self._parameterNode.model = choice.name
        self.updateButtons()

    def onDeviceChanged(self, *_args):
        setLastDevice(self.ui.deviceComboBox.currentText)

    def onCacheFolderChanged(self, path):
        setCacheFolder(path)
        self.refreshModels()

    def onImportModel(self):
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Import LDFSAM model"), "",
                                              _("LDFSAM model (*.safetensors)"))
        if path:
            self.startRun(self.logic.importModelProcess(path), self.refreshModels)

    def onDownloadModel(self):
        choice = self.selectedChoice()
        if choice:
            self.startRun(self.logic.downloadModelProcess(choice.name), self.refreshModels)
