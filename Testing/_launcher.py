"""A stand-in for the CTK application launcher (PythonSlicer, Slicer) for tests: what the modules really start.

Like ctkAppLauncher, it starts the program given on its command line as a child in its own process group, has no
signal handler (SIGTERM ends it with -15), exits with the child's status when the child exits, and when the child
crashes or is killed prints "error: [PROGRAM] exit abnormally - Report the problem." and exits with 1
(ctkAppLauncherPrivate::applicationFinished).
"""

import subprocess
import sys

if __name__ == "__main__":
    child = subprocess.Popen(sys.argv[1:])
    status = child.wait()
    if status < 0:
        print(f"error: [{sys.argv[1]}] exit abnormally - Report the problem.", file=sys.stderr, flush=True)
        sys.exit(1)
    sys.exit(status)
