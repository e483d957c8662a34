"""``ldfsam prompt-worker``: a persistent process answering prompted-segmentation requests on stdin/stdout.

One JSON object per line in, one per line out (``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``).
The model loads once and the slice embeddings of the open volume stay in memory between requests, so a click
on a slice already encoded costs only SAM's decoder. Requests:

- ``{"cmd": "open", "volume": PATH}``: read a volume (closes the previous one).
- ``{"cmd": "segment", "structure": {...}, "output": PATH}``: one entry of the prompts file (name, box, points,
  slices); writes the structure's mask as a label map (1 = structure), atomically, and remembers the prompts.
  The label map is the smallest block of the volume's grid that holds the mask (same spacing and direction, its
  origin on the block's first voxel; one background voxel at the volume's origin for an empty mask). Answer:
  ``slices`` (first, last), ``voxels``, ``index`` (the block's first voxel, z, y, x), ``output``, ``seconds``;
  with a prior (``--prior``), ``not_used``: the clicks and box that prompt validation dropped, moved or refitted
  (``point``: index in the structure's points, null for the box; ``label``; ``action``: dropped, moved,
  tightened, extended; ``reason``; ``position`` and ``moved_to`` in LPS mm).
- ``{"cmd": "click", "name": NAME, "position": [x, y, z], "label": "include"|"exclude", "output": PATH}``:
  adds a click to that structure's prompts and segments it again.
- ``{"cmd": "undo", "name": NAME, "output": PATH}``: drops the structure's last change and segments it again.
- ``{"cmd": "saliency", "slices": [FIRST, LAST], "output": PATH}``: with a prior, SPD's tooth saliency map of
  slices FIRST to LAST (indices, inclusive) on whole slices, written as a float32 probability map of that block
  of the grid (placed like ``segment``'s); one head pass per slice, and an encoder pass for each slice not yet
  encoded whole. Answer: ``slices``, ``index``, ``output``, ``seconds``.
- ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import argparse

COMMAND = "prompt-worker"
HELP = "Answer prompted-segmentation requests (JSON lines on stdin/stdout), keeping the model and embeddings."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="a lite-preset model (default: LiteMedSAM as published)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto: float32 on every CPU (where a prompted structure ends must not depend on "
                             "the CPU); bf16: faster where the CPU has native bf16")
    parser.add_argument("--prior", metavar="MODEL", default="auto",
                        help="a model with a saliency head that checks the clicks (SPD); auto: the default model "
                             "when it has one; none: every click taken as given")


class Worker:
    def __init__(self, model=None, precision: str = "auto", prior=None) -> None:
        self.model = model
        self.precision = precision
        self.prior = prior
        self.session = None
        self.history = {}  # name -> list of structure entries (dicts), newest last

    def open(self, req):
        from ..infer.prompted import PromptedSession

        self.session = PromptedSession(req["volume"], self.model, precision=self.precision, prior=self.prior)
        self.prior = self.session.prior  # loaded once, for the next volumes too
        self.history.clear()
        return {"size": list(self.session.grid.size)}

    def _run(self, entry, output):
        import time
        from pathlib import Path

        import numpy as np

        from ..infer import outputs as out_io
        from ..infer.prompts import parse_structure, to_voxels

        if self.session is None:
            raise ValueError("no volume is open; send {\"cmd\": \"open\", \"volume\": PATH} first")
        t = time.perf_counter()
        structure = parse_structure(entry, 0)
        result = self.session.segment(to_voxels(structure, self.session.grid))
        # Only the block holding the mask: the whole grid of a CBCT is 100-200 MB to write and for Slicer to read.
        start, block = result.block() or ((0, 0, 0), np.zeros((1, 1, 1), bool))
        out_io.write_label_map(Path(output), block.astype(np.uint8), self.session.grid.crop(start, block.shape),
                               overwrite=True)
        voxels = int(block.sum())
        extra = {} if self.session.prior is None else {"not_used": self._not_used(result.validation)}
        return {**extra, "name": structure.name, "output": str(output), "voxels": voxels,
                "slices": [start[0], start[0] + block.shape[0] - 1] if voxels else None,
                "index": list(start), "seconds": round(time.perf_counter() - t, 3)}

    def _not_used(self, decisions):
        """Validation decisions other than "kept", positions in LPS mm (what the Slicer panel shows)."""
        image = self.session.image

        def lps(zyx):
            return None if zyx is None else list(image.TransformContinuousIndexToPhysicalPoint(
                (float(zyx[2]), float(zyx[1]), float(zyx[0]))))

        return [{"point": d["point"], "label": "include" if d["include"] else "exclude", "action": d["action"],
                 "reason": d["reason"], "position": lps(d["position"]), "moved_to": lps(d["moved_to"])}
                for d in decisions if d["action"] != "kept"]

    def segment(self, req):
        entry = req["structure"]
        answer = self._run(entry, req["output"])
        self.history.setdefault(answer["name"], []).append(entry)
        return answer

    def click(self, req):
        import copy

        name = req["name"]
        if not self.history.get(name):
            raise ValueError(f"no structure {name!r} was segmented; send a \"segment\" request first")
        entry = copy.deepcopy(self.history[name][-1])
        entry.setdefault("points", []).append({"position": req["position"], "label": req.get("label", "include")})
        answer = self._run(entry, req["output"])
        self.history[name].append(entry)
        return answer

    def saliency(self, req):
        """The prior's map on whole slices ``req["slices"]`` (first, last), written to ``req["output"]``."""
        import time
        from pathlib import Path

        import numpy as np

        from ..infer import outputs as out_io

        if self.session is None:
            raise ValueError("no volume is open; send {\"cmd\": \"open\", \"volume\": PATH} first")
        if self.session.prior is None:
            raise ValueError("the worker has no prior (--prior none or a default model without a saliency head)")
        nz = self.session.grid.size[2]
        first, last = (int(v) for v in req["slices"])
        if not 0 <= first <= last < nz:
            raise ValueError(f"slices {[first, last]}: give first <= last, both within 0..{nz - 1}")
        t = time.perf_counter()
        maps = self.session.maps
        block = np.stack([maps.map(z) for z in range(first, last + 1)])
        out_io.write_probabilities(Path(req["output"]), block, self.session.grid.crop((first, 0, 0), block.shape),
                                   overwrite=True)
        return {"output": str(req["output"]), "slices": [first, last], "index": [first, 0, 0],
                "seconds": round(time.perf_counter() - t, 3)}

    def undo(self, req):
        name = req["name"]
        if len(self.history.get(name, [])) < 2:
            raise ValueError(f"nothing to undo for {name!r}")
        self.history[name].pop()
        return self._run(self.history[name][-1], req["output"])


def run(args) -> int:
    import json
    import sys

    from ..errors import LDFSAMError

    out, sys.stdout = sys.stdout, sys.stderr  # stdout carries answers only
    from ..infer.saliency_prior import prior_option

    worker = Worker(args.model, args.precision, prior_option(getattr(args, "prior", "auto")))
    handlers = {"open": worker.open, "segment": worker.segment, "click": worker.click, "undo": worker.undo,
                "saliency": worker.saliency}
    out.write(json.dumps({"ok": True, "ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("a request is a JSON object")
            cmd = req.get("cmd")
            if cmd == "quit":
                out.write(json.dumps({"ok": True, "bye": True}) + "\n")
                out.flush()
                return 0
            if cmd not in handlers:
                raise ValueError(f"unknown cmd {cmd!r}; known: open, segment, click, undo, saliency, quit")
            answer = {"ok": True, **handlers[cmd](req)}
        except (LDFSAMError, ValueError, KeyError, TypeError) as e:
            message = f"missing field {e}" if isinstance(e, KeyError) else str(e)
            answer = {"ok": False, "error": message}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0
