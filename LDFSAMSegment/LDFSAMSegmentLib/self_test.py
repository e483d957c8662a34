"""The frame every LDFSAM self-test runs in (Slicer layer): an empty scene, a fresh folder, and the core's user
folder (``LDFSAM_HOME``) inside it, so that a test never sees or changes the user's models and settings."""

import os
import shutil
import tempfile
import unittest

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest


class LDFSAMSelfTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()
        self.folder = tempfile.mkdtemp(prefix=f"{type(self).__name__}-")
        self._home = os.environ.get("LDFSAM_HOME")
        os.environ["LDFSAM_HOME"] = os.path.join(self.folder, "home")

    def tearDown(self):
        if self._home is None:
            os.environ.pop("LDFSAM_HOME", None)
        else:
            os.environ["LDFSAM_HOME"] = self._home
        shutil.rmtree(self.folder, ignore_errors=True)

    def runEach(self, *tests):
        """Each test in its own frame; a skipped one (the core's packages missing) is shown, not failed."""
        for test in tests:
            self.setUp()
            try:
                test()
            except unittest.SkipTest as e:
                self.delayDisplay(f"Skipped: {e}")
            finally:
                self.tearDown()
