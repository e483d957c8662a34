#!/usr/bin/env bash
# Installs LDFSAM and everything it needs into the current Python environment.
# torch is installed first, as a pair with the torchvision it was built with: ultralytics needs both,
# and a mismatched pair fails at import ("operator torchvision::nms does not exist").
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

if ! "$PY" - <<'PYCHECK' 2>/dev/null; then
import torch, torchvision  # noqa: F401
from torchvision.ops import nms  # noqa: F401
PYCHECK
  case "$(uname -m)" in
    x86_64) pair="torch==2.14.1 torchvision==0.29.1" ;;
    aarch64|arm64) pair="torch==2.9.1 torchvision==0.24.1" ;;
    *) pair="torch torchvision" ;;
  esac
  echo "setup: installing $pair"
  # shellcheck disable=SC2086
  "$PY" -m pip install --disable-pip-version-check $pair
fi

"$PY" -m pip install --disable-pip-version-check -q -e ".[dev]"
echo "setup: done ($("$PY" -c 'import ldfsam; print("ldfsam", ldfsam.__version__)'))"
