"""One prepared GPU check of PageLLM: the full pipeline at GPT-2's size on real data, timed.

Runs the four PageLLM variants (mixed, item-level, page-level, no reward) of the `reward-cpu`
preset on the embedded real 2014 Musical Instruments 5-core, one seed, with a GPT-2-sized
backbone on the GPU, then writes a table of what Table 3 of the paper reports (18 s per
fine-tuning epoch and 8.94 GB on an RTX 4090, GPT-2, full fine-tuning): wall time per stage,
time per epoch, peak GPU memory, parameters, plus the reward models' held-out accuracy and the
variants' test metrics.

    python scripts/gpu_pagellm.py --out results/gpu [--backbone gpt2-random] [--set key=value ...]

Backbone: `gpt2-random` by default (GPT-2's 12 layers x 768-d, random initialisation, offline
word-level tokenizer: GPT-2's cost, not its knowledge, for machines that cannot reach the
Hugging Face hub); `--backbone gpt2 --set pagellm.backbone_path=/path/to/gpt2` for the real
weights. Learning rates are those of the `cpu` settings scaled for a 12-layer model (below);
nothing here is tuned on test metrics. Budget: about 10 minutes on one H100-class GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# A 12-layer random transformer diverges at the 3e-3 the 2-layer `tiny` backbone uses.
GPU_SETTINGS = {
    "pagellm.device": "cuda",
    "pagellm.pretrain_lr": "3.0e-4",
    "pagellm.finetune_lr": "3.0e-4",
    "pagellm.rm_lr": "1.0e-4",
    "pagellm.ppo_lr": "1.0e-5",
    "pagellm.max_prompt_tokens": "256",
    "pagellm.rank_batch_size": "256",
}
VARIANTS = ("pagellm", "pagellm-item", "pagellm-page", "pagellm-sft")
PAPER = "Table 3 (paper): GPT-2, full fine-tuning, RTX 4090: 18 s per fine-tuning epoch, 8.94 GB."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/gpu", help="workspace root of this check (results, tables)")
    parser.add_argument("--backbone", default="gpt2-random", help="gpt2-random (offline) | gpt2 | smollm2-135m")
    parser.add_argument("--dataset", default="am-instruments-2014")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra key=value settings")
    args = parser.parse_args(argv)
    root = Path(args.out).resolve()
    settings = {**GPU_SETTINGS, "pagellm.backbone": args.backbone,
                **dict(s.split("=", 1) for s in args.sets)}
    command = [sys.executable, "-m", "bench.cli", "--root", str(root), "run", "--preset", "reward-cpu",
               "--datasets", args.dataset, "--seeds", "0", "--models", ",".join(VARIANTS)]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    print(" ".join(command), flush=True)
    t0 = time.perf_counter()
    code = subprocess.call(command)
    wall = time.perf_counter() - t0
    report = summarise(root, args.dataset, settings, wall)
    (root / "gpu_pagellm.md").write_text(report)
    print(report)
    return code


def summarise(root: Path, dataset: str, settings: dict, wall: float) -> str:
    lines = [f"# PageLLM on the GPU: {dataset}, {settings['pagellm.backbone']}", "", PAPER, "",
             f"Whole run (4 variants, shared stages once): {wall:.0f} s. Settings: "
             + ", ".join(f"`{k}={v}`" for k, v in settings.items()), "",
             "| model | stage | seconds | s/epoch | peak GPU MB | parameters | cached |",
             "|---|---|---|---|---|---|---|"]
    metrics = ["| model | recall@20 | ndcg@20 | reward accuracy (page / item / mixed) | device |",
               "|---|---|---|---|---|"]
    for model in VARIANTS:
        files = sorted((root / "results" / "runs" / "reward-cpu" / dataset).glob(f"*/{model}/seed0.json"))
        if not files:
            lines.append(f"| {model} | (no result: see results/failures) | | | | | |")
            continue
        result = json.loads(files[0].read_text())
        info = result.get("model_info") or {}
        for stage, record in (info.get("stages") or {}).items():
            memory = (record.get("memory") or {}).get("peak_gpu_mb")
            lines.append(f"| {model} | {stage} | {record.get('seconds')} | {record.get('seconds_per_epoch') or ''} | "
                         f"{memory or ''} | {(record.get('parameters') or {}).get('total', '')} | "
                         f"{record.get('cached')} |")
        acc = info.get("reward_accuracy") or {}
        shown = " / ".join(f"{(acc.get(k) or {}).get('all', '-')}" for k in ("page", "item", "mixed"))
        test = result.get("metrics", {})
        metrics.append(f"| {model} | {test.get('recall@20')} | {test.get('ndcg@20')} | {shown} | "
                       f"{json.dumps((result.get('provenance') or {}).get('device', ''))} |")
    return "\n".join(lines + [""] + metrics) + "\n"


if __name__ == "__main__":
    sys.exit(main())
