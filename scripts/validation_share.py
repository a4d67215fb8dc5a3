"""How much of an epoch the models written here spend validating (docs/performance.md).

For HSTU, MD-CVAE and UniSRec (the shared loop of bench/training.py) and PageLLM's fine-tuning
(pagellm/model.py), trains each for a few epochs at a preset's settings, with patience high
enough that none stops, and prints per model: seconds per training epoch, seconds per
validation (bench.scoring.validate: scoring or ranking every valid user, then the evaluator),
and the share of validation in an epoch that validates. Wall seconds, one run.

    PYTHONPATH=. python scripts/validation_share.py --root /tmp/share --dataset am-instruments-2014 \\
        --preset cpu --epochs 3 [--models hstu md-cvae] [--set hstu.valid_every=2]
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

import numpy as np

MODELS = ("hstu", "md-cvae", "unisrec", "pagellm-sft")
# The modules that import bench.training.fit_with_early_stopping by name.
LOOP_MODULES = {"hstu": "baselines.hstu", "md-cvae": "baselines.mdcvae", "unisrec": "baselines.unisrec"}


def measure(name: str, job, split, workdir: Path) -> dict:
    import bench.scoring
    import bench.training
    from bench.models import MODELS as REGISTRY

    real_validate, valid_seconds = bench.scoring.validate, []

    def timed_validate(*args, **kwargs):
        start = time.perf_counter()
        value = real_validate(*args, **kwargs)
        valid_seconds.append(time.perf_counter() - start)
        return value

    stoppers = []
    real_loop = bench.training.fit_with_early_stopping

    def kept_loop(*args, **kwargs):
        out = real_loop(*args, **kwargs)
        stoppers.append(out[2])
        return out

    patched = [(bench.scoring, "validate", timed_validate)]
    if name in LOOP_MODULES:
        patched.append((importlib.import_module(LOOP_MODULES[name]), "fit_with_early_stopping", kept_loop))
    else:
        patched.append((importlib.import_module("pagellm.model"), "validate", timed_validate))
    saved = [(module, attr, getattr(module, attr)) for module, attr, _ in patched]
    for module, attr, value in patched:
        setattr(module, attr, value)
    try:
        model = REGISTRY.get(job.model_class_name)()
        start = time.perf_counter()
        model.fit(split, job.config, workdir)
        fit_seconds = time.perf_counter() - start
    finally:
        for module, attr, value in saved:
            setattr(module, attr, value)
    if stoppers:
        train = stoppers[-1].seconds["train"]
    else:  # PageLLM: its fine-tuning log times each epoch's training alone
        train = [e["seconds"] for e in model.extra_result()["stages"]["finetune"]["epochs"]]
    t, v = float(np.mean(train)), float(np.mean(valid_seconds)) if valid_seconds else float("nan")
    return {"model": name, "epochs": len(train), "validations": len(valid_seconds), "train_s": t,
            "valid_s": v, "share": v / (t + v), "fit_s": fit_seconds}


def main() -> None:
    from bench import config as cfg
    from bench.data.datasets import ensure_split
    from bench.paths import Workspace
    from bench.runner import plan

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="workspace (data and work folders)")
    parser.add_argument("--dataset", default="am-instruments-2014")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", help="NAME.key=value")
    args = parser.parse_args()

    ws = Workspace.at(args.root)
    preset = cfg.load_preset(args.preset)
    rows = []
    for name in args.models:
        epochs = {"finetune_epochs": args.epochs} if name.startswith("pagellm") else {"epochs": args.epochs}
        overrides = cfg.parse_overrides([f"{name}.{k}={v}" for k, v in epochs.items()]
                                        + [f"{name}.patience={args.epochs + 1}"] + list(args.overrides))
        job = plan(preset, ws, models=[name], datasets=[args.dataset], seeds=[0], overrides=overrides)[0]
        split = ensure_split(args.dataset, ws, job.split)
        rows.append(measure(name, job, split, ws.root / "work" / f"share-{name}"))
        r = rows[-1]
        print(f"| {r['model']} | {r['epochs']} | {r['validations']} | {r['train_s']:.2f} | {r['valid_s']:.2f} "
              f"| {100 * r['share']:.0f}% | {r['fit_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
