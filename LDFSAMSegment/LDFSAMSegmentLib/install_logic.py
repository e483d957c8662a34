"""First-use installation of the core's Python packages into Slicer's Python (Slicer layer).

The plan, the constraints and the pip command come from ``dependencies`` (tested outside Slicer); this class asks,
installs and reports. A failure becomes an error dialog with pip's own output, never a traceback out of a button's
slot, and Slicer is never restarted from a test (in testing mode every confirmation answers "yes").
"""

import logging
import os
import tempfile

import slicer
from slicer.i18n import tr as _

from . import dependencies, requirements_file


class InstallLogic:
    _shared = None

    def __init__(self):
        self.checked = False

    @classmethod
    def shared(cls):
        """One per Slicer session, for both modules: the check runs once."""
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def ensure(self, askConfirmation=True, force=False):
        """True when everything the core needs is installed (installing it, after asking, when not)."""
        if self.checked and not force:
            return True
        try:
            return self._ensure(askConfirmation, force)
        except dependencies.InstallError as e:
            self._showFailure(str(e), e.details)
        except Exception as e:  # the PyTorch extension's installer, pip_install: whatever they raise
            logging.exception("LDFSAM: installing the dependencies failed")
            import traceback

            self._showFailure(f"{type(e).__name__}: {e}", traceback.format_exc())
        return False

    @staticmethod
    def _showFailure(message, details):
        slicer.util.errorDisplay(_("Installing the LDFSAM dependencies failed: {error}").format(error=message),
                                 windowTitle=_("LDFSAM dependencies"), detailedText=details)

    def _ensure(self, askConfirmation, force):
        plan = dependencies.plan(dependencies.read_requirements(requirements_file()))
        if plan.conflicts:
            logging.warning("LDFSAM: requirements that conflict with packages Slicer ships: %s", plan.conflicts)
        if plan.empty:
            self.checked = True
            if force:
                slicer.util.infoDisplay(_("All LDFSAM dependencies are installed."))
            return True
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(plan.message(),
                                                                        windowTitle=_("LDFSAM dependencies")):
            return False
        loadedBefore = dependencies.loaded_modules()  # the PyTorch extension's installer imports torch itself
        with slicer.util.WaitCursor():
            if plan.torch:
                self._installTorch(plan.torch)
            if plan.pip:
                self._pipInstall(plan.pip)
        self.checked = True
        if dependencies.needs_restart(plan.torch + plan.pip, loadedBefore):
            question = _("Packages were updated that Slicer had already loaded. Restart Slicer now to use them?")
            if slicer.app.testingEnabled():
                logging.warning("LDFSAM: %s (not restarting: testing mode)", question)
            elif slicer.util.confirmYesNoDisplay(question):
                slicer.util.restart()
        return True

    @staticmethod
    def _pipInstall(requirements):
        with tempfile.TemporaryDirectory() as folder:
            constraintsPath = os.path.join(folder, "constraints.txt")
            with open(constraintsPath, "w", encoding="utf-8") as f:
                f.write(dependencies.constraints())
            argv = dependencies.pip_install_argv(requirements, constraintsPath)
            for line in dependencies.run_install(argv, idle=slicer.app.processEvents):
                logging.info("pip: %s", line)

    def _installTorch(self, lines):
        try:
            import PyTorchUtils
        except ImportError:
            logging.warning("LDFSAM: the PyTorch extension is not installed; installing torch with pip")
            self._pipInstall(list(lines))
            return
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=False, torchVersionRequirement=dependencies.torch_version_requirement(lines))
        if torch is None:
            raise dependencies.InstallError(_("the PyTorch extension did not install PyTorch"),
                                            _("See the Python console for its messages."))
