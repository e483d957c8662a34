"""Real Phase 2 steps of the lite preset, with and without what makes them cheaper: wall and CPU time per step.

Two trainers on the same prepared dataset, prompt generator, mode and seed (the Kvasir-SEG benchmark's settings:
batch 8, lr 5e-4, one data-loader worker, cached LiteMedSAM embeddings), stepped in alternating rounds through their
own data loaders and ``Trainer._train_step``, so the machine's load falls on both alike:

- ``before``: the YOLO prompt generator's forward pass in every step and items read from the images
  (``FinetuneConfig.feature_cache = "off"``), and SAM's attention products (``Attention._few`` forced off);
- ``after``: the defaults (``ldfsam/finetune/feature_cache.py``, the few-token attention of
  ``ldfsam/model/transformer.py``).

Prints the median wall and CPU seconds per step (the main process; the data loader's worker runs beside it) and the
ratios; ``--json`` writes them with the machine and load. docs/training.md, "Where a step's time goes".

    OMP_NUM_THREADS=2 python benchmarks/bench_phase2_steps.py --prepared RUN/prepared \\
        --prompt-generator RUN/b100-phase1/student.safetensors --rounds 4 --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepared", type=Path, required=True, help="a prepared Kvasir-SEG folder (bench_kvasir.py's)")
    p.add_argument("--prompt-generator", type=Path, required=True, help="a Phase 1 student (.safetensors)")
    p.add_argument("--mode", default="dense+sparse")
    p.add_argument("--budget", type=float, default=1.0)
    p.add_argument("--yolo-size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds (default 4)")
    p.add_argument("--steps", type=int, default=8, help="steps per variant and round, the first of each not counted")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    import torch

    from ldfsam.finetune import distributed
    from ldfsam.finetune.config import FinetuneConfig
    from ldfsam.finetune.data import load_data
    from ldfsam.finetune.run import _build
    from ldfsam.finetune.trainer import Trainer, freeze_norm_statistics
    from ldfsam.model import transformer
    from ldfsam.model.presets import model_config
    from ldfsam.model.prompt_generator import load_prompt_generator_weights
    from ldfsam.progress import Progress

    _, pg_cfg, _ = load_prompt_generator_weights(args.prompt_generator)
    env = distributed.setup("cpu")
    few = transformer.Attention._few
    trainers = {}
    for variant in ("before", "after"):
        mc = model_config("lite", prompt_mode=args.mode, class_names=["polyp"])
        mc.prompt_generator = pg_cfg
        mc.prompt_generator.image_size = args.yolo_size
        mc.prompt_generator.init_weights = str(args.prompt_generator)
        cfg = FinetuneConfig(data=str(args.prepared), budget=args.budget, epochs=8, batch_size=8, lr=5e-4,
                             seed=2025, num_workers=1, max_val_items=24, box_conf="model",
                             feature_cache="off" if variant == "before" else "auto")
        data = load_data(cfg, mc.sam.image_size, args.yolo_size, ["polyp"])
        model, _ = _build(mc, None, cfg.seed)
        t0 = time.time()
        trainer = Trainer(cfg, model, mc, data, Path(tempfile.mkdtemp()), env, Progress("none"))
        print(f"{variant}: trainer ready in {time.time() - t0:.1f} s (feature cache: {trainer.features_cached})",
              flush=True)
        model.train()
        freeze_norm_statistics(model)
        trainer.sampler.set_position(0, 0)
        trainers[variant] = (trainer, trainer._net(), iter(trainer._loader(trainer.data.train, trainer.sampler)))
    times = {v: {"wall": [], "cpu": []} for v in trainers}
    for r in range(args.rounds):
        for variant in ("after", "before") if r % 2 else ("before", "after"):
            trainer, net, batches = trainers[variant]
            transformer.Attention._few = few if variant == "after" else (lambda self, tokens: False)
            wall, cpu = time.perf_counter(), time.process_time()
            for i in range(args.steps):
                trainer._train_step(net, next(batches))
                now, now_cpu = time.perf_counter(), time.process_time()
                if i:  # the first step of a round waits for the loader's worker to start
                    times[variant]["wall"].append(now - wall)
                    times[variant]["cpu"].append(now_cpu - cpu)
                wall, cpu = now, now_cpu
    transformer.Attention._few = few
    med = {v: {c: statistics.median(x) for c, x in t.items()} for v, t in times.items()}
    print(f"\n{args.mode}, batch 8, YOLO {args.yolo_size}, threads {torch.get_num_threads()}, load {os.getloadavg()}; "
          f"median of {len(times['after']['wall'])} steps per variant")
    print("| variant | wall s per step | CPU s per step |\n| --- | --- | --- |")
    for v, m in med.items():
        print(f"| {v} | {m['wall']:.2f} | {m['cpu']:.2f} |")
    ratio = {c: med["before"][c] / med["after"][c] for c in ("wall", "cpu")}
    print(f"before / after: {ratio['wall']:.2f}x wall, {ratio['cpu']:.2f}x CPU")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "threads": torch.get_num_threads(), "torch": torch.__version__,
                        "load_average_at_end": os.getloadavg()},
            "args": {k: str(v) for k, v in vars(args).items()}, "median_s": med, "ratio": ratio,
            "steps_s": times}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
