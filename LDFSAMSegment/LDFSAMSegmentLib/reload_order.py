"""The order in which "Reload" reloads a module's Lib package: every module after the modules it imports (plain
Python: read from the source files, nothing is imported).

``importlib.reload`` re-runs a module, which binds the names it imports from the modules as they are at that
moment: reloading ``logic`` before ``process`` would leave ``logic`` holding the old ``BackgroundProcess``.
Alphabetical order does exactly that (``interactive_logic`` before ``logic``, ``lifecycle`` before ``run_state``).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set


def lib_imports(path: Path, package: str) -> Set[str]:
    """The modules of ``package`` that the file imports (``from .x import``, ``from package.x import``,
    ``import package.x``), as full names."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=str(path))
    found: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = package + ("." + node.module if node.module else "")
            elif node.level == 0 and node.module and (node.module == package or
                                                      node.module.startswith(package + ".")):
                base = node.module
            else:
                continue
            if base == package:  # ``from . import x``: x is a module of the package
                found.update(f"{package}.{alias.name}" for alias in node.names)
            else:
                found.add(base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith(package + "."))
    return found


def reload_order(folder: Path, package: str) -> List[str]:
    """The package's modules (``package.name``, from the ``*.py`` files in ``folder``, ``__init__`` left out),
    each after the modules of the package it imports; alphabetical where the imports leave a choice.
    ValueError naming the modules of an import cycle."""
    folder = Path(folder)
    modules = {f"{package}.{p.stem}": p for p in sorted(folder.glob("*.py")) if p.stem != "__init__"}
    needs: Dict[str, Set[str]] = {name: lib_imports(path, package) & set(modules) - {name}
                                  for name, path in modules.items()}
    order: List[str] = []
    done: Set[str] = set()
    while len(order) < len(modules):
        ready = sorted(name for name in modules if name not in done and needs[name] <= done)
        if not ready:
            raise ValueError("import cycle between " + ", ".join(sorted(set(modules) - done)))
        order.append(ready[0])
        done.add(ready[0])
    return order
