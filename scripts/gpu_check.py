"""The GPU check: every measurement of this project that needs a GPU, in one run of at most
`--budget-minutes` (12 by default), written as one table for the docs (gpu_check.md + .json).

    python scripts/gpu_check.py --out results/gpu [--root WORKSPACE] [--dataset NAME] [--backbone gpt2-random]
    python scripts/gpu_check.py --out /tmp/gpu --device cpu --quick     # the same code on a CPU, in about a minute

Parts, in this order (results are written after each, so a run stopped from outside keeps what
it finished):

  pagellm-epoch  one GPT-2-sized PageLLM fine-tuning epoch on `--pagellm-dataset` (default: the
                 embedded real am-instruments-2014): the pipeline's data (`pagellm.data.build`),
                 backbone, prompts and fine-tuning step (`pagellm.sft.list_nll`, `step`), the
                 `default` settings of bench/configs/models/pagellm.yaml (batch 16, prompts up to
                 512 tokens), no pre-training; then greedy top-100 decoding of up to
                 `--decode-users` users. Beside Table 3 of the paper: 18 s per epoch, 8.94 GB.
  pagellm-vocab  PageLLM at Amazon Sports' size (332k user + 104k item tokens; the embedding padded
                 to GPT-2's 50,257 words when the backbone's own vocabulary is smaller): fine-tuning
                 steps with prompts of 8 and of 50 rated items, one pre-training step of 8 x 512
                 tokens (full-vocabulary loss, chunked), top-100 decoding of `--decode-users`
                 users: time and peak memory, against the extrapolation of
                 scripts/pagellm_vocab_cost.py (docs/performance.md, "PageLLM at 104k items").
  sasrec         SASRec, then LightGCN (RecBole, `baselines.recbole_adapter`, their `default`
  lightgcn       settings) for `--epochs` epochs without validation on `--dataset` (default: the
                 largest dataset prepared in the workspace, else am-instruments-2014): seconds per
                 epoch, peak memory.

Time guard: a part starts only with at least a minute of the budget left and stops its loops
at its share of the budget (`SHARES`); a loop stopped early projects its epoch from the steps
done (marked "projected"). Preparing data (splits, views) counts against the budget too.
`--quick` swaps in the `tiny` backbone, synthetic-tiny, a 2,000-user / 1,000-item vocabulary
part and the `smoke` settings of the baselines, for tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
import traceback
from pathlib import Path

import numpy as np

PARTS = ("pagellm-epoch", "pagellm-vocab", "sasrec", "lightgcn")
SHARES = {"pagellm-epoch": 0.25, "pagellm-vocab": 0.35, "sasrec": 0.2, "lightgcn": 0.2}  # of the budget
MIN_START_SECONDS = 60
SPORTS = {"users": 332_000, "items": 104_000}  # Amazon 2018 Sports 5-core (issue 12)
GPT2_WORDS = 50_257
FALLBACK_DATASET = "am-instruments-2014"
PAPER = "Table 3 (paper): GPT-2, full fine-tuning, RTX 4090 (24 GB): 18 s per fine-tuning epoch, 8.94 GB."
logger = logging.getLogger("gpu_check")


class Clock:
    """The run's budget: `deadline(part)` is when a part must stop its loops."""

    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def deadline(self, part: str) -> float:
        return min(time.perf_counter() + SHARES[part] * self.seconds, self.start + self.seconds)


def measured(fn, device):
    """(fn(), wall seconds, peak GPU MiB or None): the peak since fn started."""
    import torch

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    peak = round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None
    return out, time.perf_counter() - t0, peak


def largest_prepared(root: Path) -> str | None:
    """The dataset of the workspace with the most interactions in data/processed/*/manifest.json."""
    sizes = {}
    for manifest in (root / "data" / "processed").glob("*/manifest.json"):
        try:
            sizes[manifest.parent.name] = int(json.loads(manifest.read_text()).get("n_interactions") or 0)
        except (OSError, ValueError):
            continue
    return max(sizes, key=sizes.get) if sizes else None


# ---------------------------------------------------------------------- PageLLM

def train_steps(backbone, examples, batch_size: int, lr: float, deadline: float, seed: int = 0) -> dict:
    """One fine-tuning epoch over `examples` (`pagellm.sft.finetune`'s loop), stopped at `deadline`:
    steps done, seconds per step (the first, with its allocations, excluded when there are more),
    the epoch's seconds (projected from the steps done when stopped)."""
    import torch

    from pagellm.sft import batches, list_nll, optimizer, step

    params = backbone.parameters()
    opt = optimizer(params, lr)
    parts = batches(len(examples), batch_size, torch.Generator().manual_seed(seed))
    backbone.model.train()
    times = []
    for idx in parts:
        t0 = time.perf_counter()
        rows = [examples[i] for i in idx.tolist()]
        step(opt, list_nll(backbone, [r.prompt for r in rows], [r.items for r in rows], [r.banned for r in rows]),
             params)
        if backbone.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            break
    backbone.model.eval()
    per_step = float(np.mean(times[1:] if len(times) > 1 else times))
    done = len(times) == len(parts)
    return {"steps": len(times), "steps_per_epoch": len(parts), "seconds_per_step": round(per_step, 4),
            "epoch_seconds": round(sum(times) if done else per_step * len(parts), 2), "projected": not done}


def decode_timing(backbone, prompts, banned, steps: int, batch_size: int) -> dict:
    from pagellm.backbones import decode_many

    t0 = time.perf_counter()
    decode_many(backbone, prompts, banned, steps, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    return {"users": len(prompts), "top_k": steps, "batch": batch_size,
            "seconds_per_user": round(seconds / max(len(prompts), 1), 5)}


def part_pagellm_epoch(args, ws, device, clock) -> dict:
    """A fine-tuning epoch of the pipeline on real data, and top-100 decoding."""
    import torch

    from bench import config as cfg
    from bench.data.datasets import ensure_split
    from bench.data.splits import SplitSpec
    from pagellm import data as pdata
    from pagellm.backbones import load_backbone
    from pagellm.model import PageLLMConfig
    from pagellm.sft import ListExample

    deadline = clock.deadline("pagellm-epoch")
    t0 = time.perf_counter()
    split = ensure_split(args.pagellm_dataset, ws, SplitSpec())
    c = cfg.build(PageLLMConfig, {**cfg.model_yaml("pagellm", "smoke" if args.quick else "default"),
                                  "backbone": args.backbone, "device": str(device)}, "pagellm")
    data = pdata.build(split, c.data_config())
    texts = list(data.pretrain_texts) + [r[3] for r in data.rating_examples] + list(data.finetune_prompts.values())
    backbone = load_backbone(c.backbone, split.n_users, split.n_items, device, source=c.backbone_path, texts=texts)
    users = sorted(u for u, items in data.label_lists.items() if items and u in data.finetune_prompts)
    prompts = backbone.encode([data.finetune_prompts[u] for u in users], c.max_prompt_tokens,
                              reserve=max(c.data_max_list_len, c.ppo_list_len))
    examples = [ListExample(u, p, list(data.label_lists[u]), list(data.input_items.get(u, [])))
                for u, p in zip(users, prompts)]
    prepare = time.perf_counter() - t0
    epoch, _, peak = measured(lambda: train_steps(backbone, examples, c.finetune_batch_size, c.finetune_lr, deadline),
                              device)
    n = min(args.decode_users, len(users))
    banned = [list(data.input_items.get(u, [])) for u in users[:n]]
    with torch.no_grad():
        decode, _, decode_peak = measured(lambda: decode_timing(backbone, prompts[:n], banned,
                                                                min(100, split.n_items), c.rank_batch_size), device)
    return {"dataset": split.dataset, "users": split.n_users, "items": split.n_items,
            "backbone": c.backbone, "parameters": backbone.parameter_counts()["total"],
            "examples": len(examples), "mean_prompt_tokens": round(float(np.mean([len(p) for p in prompts])), 1),
            "batch": c.finetune_batch_size, "prepare_seconds": round(prepare, 1),
            "finetune": {**epoch, "peak_gpu_mb": peak}, "decode": {**decode, "peak_gpu_mb": decode_peak},
            "decode_all_users_seconds": round(decode["seconds_per_user"] * split.n_users, 1)}


def part_pagellm_vocab(args, ws, device, clock) -> dict:
    """PageLLM with Sports' token counts: fine-tuning steps, a pre-training step, decoding."""
    import torch

    from pagellm.backbones import load_backbone
    from pagellm.prompts import finetune_prompt
    from pagellm.sft import ListExample, optimizer, step, token_loss

    deadline = clock.deadline("pagellm-vocab")
    n_users, n_items = (2000, 1000) if args.quick else (SPORTS["users"], SPORTS["items"])
    t0 = time.perf_counter()
    backbone, build, _ = measured(lambda: load_backbone(args.backbone, n_users, n_items, device,
                                                        texts=["<u_0> has rated <i_1> 5. Recommend a ranked page:"]),
                                  device)
    if args.backbone == "gpt2-random":  # its offline word-level vocabulary is small: pad to GPT-2's 50,257
        size = backbone.tokens.vocab_size + GPT2_WORDS - backbone.tokens.user_start
        backbone.base.resize_token_embeddings(size)  # rows after the items: the item range is unchanged
        backbone.tokens = dataclasses.replace(backbone.tokens, vocab_size=size)
    rng = np.random.default_rng(0)

    def examples(n: int, history: int) -> list:
        out = []
        for u in rng.choice(n_users, n, replace=False).tolist():
            seen = rng.choice(n_items, history + 20, replace=False).tolist()
            text = finetune_prompt(u, seen[:history], rng.integers(1, 6, history).tolist())
            out.append(ListExample(u, backbone.encode([text])[0], seen[history:], seen[:history]))
        return out

    batch = 16
    result = {"users": n_users, "items": n_items, "vocab": backbone.tokens.vocab_size,
              "parameters": backbone.parameter_counts()["total"], "build_seconds": round(build, 1)}
    # Each step kind gets an equal share of the time left to the part.
    for name, history in (("finetune_8_items", 8), ("finetune_50_items", 50)):
        rows = examples(batch * 4, history)
        share = time.perf_counter() + (deadline - time.perf_counter()) / 4
        steps, _, peak = measured(lambda: train_steps(backbone, rows, batch, 1e-4, share), device)
        result[name] = {"prompt_tokens": round(float(np.mean([len(r.prompt) for r in rows])), 1),
                        "steps": steps["steps"], "seconds_per_step": steps["seconds_per_step"], "peak_gpu_mb": peak}
    length = 64 if args.quick else 512
    ids = torch.randint(backbone.tokens.vocab_size, (8, length), device=device)
    params = backbone.parameters()

    def pretrain_step():  # the next-token half of `pagellm.sft.pretrain`'s step, with AdamW
        backbone.model.train()
        h = backbone.hidden(ids, torch.ones_like(ids))
        step(optimizer(params, 1e-4), token_loss(backbone, h[:, :-1].reshape(-1, h.shape[-1]), ids[:, 1:].reshape(-1)),
             params)
        backbone.model.eval()

    _, seconds, peak = measured(pretrain_step, device)
    result["pretrain_8x512"] = {"tokens": length, "seconds": round(seconds, 3), "peak_gpu_mb": peak}
    rows = examples(args.decode_users, 8)
    with torch.no_grad():
        decode, _, peak = measured(lambda: decode_timing(backbone, [r.prompt for r in rows], [r.banned for r in rows],
                                                         100, args.rank_batch), device)
    result["decode"] = {**decode, "peak_gpu_mb": peak}
    result["decode_all_users_hours"] = round(decode["seconds_per_user"] * n_users / 3600, 2)
    result["part_seconds"] = round(time.perf_counter() - t0, 1)
    return result


# ---------------------------------------------------------------------- baselines

def part_recbole(model_name: str, args, ws, device, clock) -> dict:
    """`--epochs` epochs of a RecBole baseline through the project's adapter, no validation."""
    from bench import config as cfg
    from bench.data.datasets import ensure_split
    from bench.data.splits import SplitSpec
    from bench.models import MODELS
    from bench.provenance import PeakMemory

    t0 = time.perf_counter()
    split = ensure_split(args.dataset, ws, SplitSpec())
    cls = MODELS.get(model_name)
    settings = "smoke" if args.quick else "default"
    values = {**cfg.model_yaml(model_name, settings), "epochs": args.epochs,
              "eval_step": args.epochs + 1, "device": device.type}  # eval_step > epochs: no validation
    config = cfg.build(cls.Config, values, model_name)
    model = cls()
    with PeakMemory() as memory:
        model.fit(split, config, Path(args.out) / "work" / model_name)
    total = time.perf_counter() - t0
    epochs = [round(wall, 2) for wall, _ in model.timings["train"]]
    return {"dataset": split.dataset, "users": split.n_users, "items": split.n_items, "settings": settings,
            "interactions": int(len(split.train)), "epochs": epochs,
            "seconds_per_epoch": round(float(np.mean(epochs)), 2) if epochs else None,
            "prepare_seconds": round(total - sum(epochs), 1), "parameters": model.info.get("n_parameters"),
            **memory.report()}


# ---------------------------------------------------------------------- report

def table(results: dict, args) -> str:
    """The markdown the docs quote."""
    head = results["run"]
    lines = [f"# GPU check: {head['device']}", "", PAPER, "",
             f"Budget {args.budget_minutes:g} min, used {head.get('seconds', 0):.0f} s; backbone `{args.backbone}`"
             f"{' (--quick)' if args.quick else ''}; torch {head['torch']}. Projected = epoch time from the steps "
             "done before the part's time share ran out.", "",
             "| part | data | what | time | peak GPU MiB | notes |", "|---|---|---|---|---|---|"]
    for part in PARTS:
        r = results["parts"].get(part)
        if r is None:
            continue
        if "skipped" in r or "failed" in r:
            lines.append(f"| {part} | | | | | {r.get('skipped') or 'FAILED: ' + r['failed']} |")
            continue
        if part == "pagellm-epoch":
            ft, dec = r["finetune"], r["decode"]
            data = f"{r['dataset']} ({r['users']:,} users, {r['items']:,} items)"
            lines.append(f"| {part} | {data} | fine-tuning epoch, batch {r['batch']}, {r['examples']:,} lists, "
                         f"prompts {r['mean_prompt_tokens']} tokens | {ft['epoch_seconds']} s"
                         f"{' (projected)' if ft['projected'] else ''}, {ft['seconds_per_step']} s/step | "
                         f"{ft['peak_gpu_mb']} | {r['parameters']:,} parameters; prepare {r['prepare_seconds']} s |")
            lines.append(f"| {part} | {data} | top-{dec['top_k']} decoding, batch {dec['batch']} | "
                         f"{dec['seconds_per_user']} s/user ({dec['users']} users); all users "
                         f"{r['decode_all_users_seconds']} s | {dec['peak_gpu_mb']} | |")
        elif part == "pagellm-vocab":
            data = f"{r['users']:,} user + {r['items']:,} item tokens, V = {r['vocab']:,}"
            for key in ("finetune_8_items", "finetune_50_items"):
                s = r[key]
                lines.append(f"| {part} | {data} | fine-tuning step, batch 16, prompts {s['prompt_tokens']} tokens "
                             f"| {s['seconds_per_step']} s/step ({s['steps']} steps) | {s['peak_gpu_mb']} | "
                             f"{r['parameters']:,} parameters; built in {r['build_seconds']} s |")
            p = r["pretrain_8x512"]
            lines.append(f"| {part} | {data} | pre-training step, 8 x {p['tokens']} tokens, chunked full-vocabulary "
                         f"loss | {p['seconds']} s | {p['peak_gpu_mb']} | one AdamW step, its state created there |")
            d = r["decode"]
            lines.append(f"| {part} | {data} | top-100 decoding, batch {d['batch']} | {d['seconds_per_user']} s/user "
                         f"({d['users']} users); all users {r['decode_all_users_hours']} h | {d['peak_gpu_mb']} | |")
        else:
            data = f"{r['dataset']} ({r['interactions']:,} train interactions)"
            lines.append(f"| {part} | {data} | {len(r['epochs'])} training epochs, `{r['settings']}` settings | "
                         f"{r['seconds_per_epoch']} s/epoch ({', '.join(map(str, r['epochs']))}) | "
                         f"{r.get('peak_gpu_mb')} | prepare {r['prepare_seconds']} s; {r['parameters']:,} parameters |")
    return "\n".join(lines).replace("| None |", "| n/a |") + "\n"


def write(results: dict, args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    (out / "gpu_check.md").write_text(table(results, args))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/gpu", help="where gpu_check.md / gpu_check.json (and work/) go")
    parser.add_argument("--root", help="workspace with the prepared data (default: $BENCH_HOME or the current "
                                       "directory)")
    parser.add_argument("--dataset", help="baselines' data (default: the largest prepared dataset of the workspace, "
                                          f"else {FALLBACK_DATASET}; synthetic-tiny with --quick)")
    parser.add_argument("--pagellm-dataset", help=f"the PageLLM epoch's data (default {FALLBACK_DATASET}; "
                                                  "synthetic-tiny with --quick)")
    parser.add_argument("--backbone", help="gpt2-random (default: GPT-2's size, offline) | gpt2 | smollm2-135m; "
                                           "tiny with --quick")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--device", default="cuda", help="cuda | cpu | cuda:N")
    parser.add_argument("--budget-minutes", type=float, default=12.0)
    parser.add_argument("--epochs", type=int, default=2, help="baseline epochs")
    parser.add_argument("--decode-users", type=int, default=1024)
    parser.add_argument("--rank-batch", type=int, default=64, help="users decoded together at Sports size")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a CPU test run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)

    import torch

    from bench.paths import Workspace
    from bench.provenance import device as device_name

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device here; run it on a GPU machine, or --device cpu --quick for the CPU check",
              file=sys.stderr)
        return 2
    device = torch.device(args.device)
    ws = Workspace.at(args.root)
    args.backbone = args.backbone or ("tiny" if args.quick else "gpt2-random")
    args.pagellm_dataset = args.pagellm_dataset or ("synthetic-tiny" if args.quick else FALLBACK_DATASET)
    args.dataset = args.dataset or ("synthetic-tiny" if args.quick else largest_prepared(ws.root) or FALLBACK_DATASET)
    if args.quick:
        args.decode_users = min(args.decode_users, 32)
    clock = Clock(60 * args.budget_minutes)
    results = {"run": {"device": device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
                       "args": vars(args)}, "parts": {}}
    runners = {"pagellm-epoch": part_pagellm_epoch, "pagellm-vocab": part_pagellm_vocab,
               "sasrec": lambda *a: part_recbole("sasrec", *a), "lightgcn": lambda *a: part_recbole("lightgcn", *a)}
    for part in [p.strip() for p in args.parts.split(",") if p.strip()]:
        if part not in runners:
            print(f"error: unknown part {part!r}; choose from {', '.join(PARTS)}", file=sys.stderr)
            return 2
        if clock.left() < MIN_START_SECONDS and not args.quick:
            results["parts"][part] = {"skipped": f"not started: {clock.left():.0f} s of the budget left"}
        else:
            logger.info("%s ...", part)
            try:
                results["parts"][part] = runners[part](args, ws, device, clock)
            except Exception as exc:  # one part's failure must not lose the others' numbers
                logger.error("%s failed:\n%s", part, traceback.format_exc())
                results["parts"][part] = {"failed": f"{type(exc).__name__}: {exc}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        results["run"]["seconds"] = round(time.perf_counter() - clock.start, 1)
        write(results, args)
    print(table(results, args))
    return 1 if any("failed" in r for r in results["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
