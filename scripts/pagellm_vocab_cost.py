"""PageLLM's cost in the size of its catalogue: measured at a few sizes on this machine (GPT-2's
dimensions), then extrapolated, by stated formulas, to Amazon Sports (104k items, 332k users).

    PYTHONPATH=. python scripts/pagellm_vocab_cost.py --out results/vocab [--items 5000,20000,50000]

PageLLM gives every user and every item a token (`pagellm.backbones`): the embedding, tied to
the output layer, gains (users + items) rows of d = 768 floats, each with a gradient and two
AdamW moments; list positions choose among the N item columns only (`Backbone.item_logits`:
the item rows of the output layer, never the full vocabulary), so fine-tuning holds (B, T, N)
logits and a decoding step (B, N); pre-training's next-token loss alone reads the full
vocabulary (`pagellm.sft.token_loss`, chunked above 2^26 logits).

Each size runs in a fresh process (environment MALLOC_MMAP_THRESHOLD_ fixed, so that freed
tensors leave the resident set) with the `gpt2-random` backbone (GPT-2's 12 x 768-d blocks, the
offline word-level vocabulary of 2,003 words instead of GPT-2's 50,257) and users = items x
`--users-per-item`. Measured, per size:

    rows        parameters and bytes of the embedding (tied output layer), AdamW state bytes
                after a fine-tuning step (the pipeline's `list_nll`, `optimizer`, `step`)
    tokenizer   seconds to build the backbone (adding the tokens), seconds per prompt to encode
    fine-tuning seconds of one step (B = 16 lists of T = 20 items, prompts of `--history` rated
                items): forward + backward, optimizer (clip + AdamW); peak memory above the
                weights and AdamW state during the whole step (gradients, activations, logits)
    item logits peak memory of the item head alone (hidden states in, gradient out): fine-tuning
                (B, T, N), a decoding step (64, N); pre-training's full-vocabulary loss over
                8 x 256 positions and V = 50,257 + users + items, at once and chunked
    decoding    seconds per user of greedy top-100 item-only decoding (`decode_many`, 16 users,
                batch 16), and of its item head alone (logits, mask, argmax: 100 steps)

Peak memory is the resident set's high-water mark (Linux: /proc/self/status VmHWM, reset
through /proc/self/clear_refs) above the resident set before the measured block. Times are CPU
seconds of the one process (`time.process_time`, OMP_NUM_THREADS=1 advised): on a shared
machine they vary less than wall time. Writes
vocab_cost.json and vocab_cost.md (measured table, linear fits, extrapolation) under --out.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

D = 768                       # GPT-2's hidden size
GPT2_WORDS = 50_257           # GPT-2's own vocabulary (the paper's backbone)
TARGET = {"users": 332_000, "items": 104_000}   # Amazon 2018 Sports 5-core (issue 12)
GPU_BYTES = 24 * 2**30        # an RTX 4090 / the paper's GPU
# The settings of bench/configs/models/pagellm.yaml `default` the extrapolation uses.
FT_BATCH, LIST_LEN, MAX_PROMPT = 16, 20, 512
PRE_BATCH = 8
RANK_BATCH, TOP_K = 64, 100
CLOCK = time.process_time
PRE_POSITIONS = 8 * 256       # positions of the measured pre-training loss (chunked above 2^26 logits)
LONG_HISTORY = 50             # data_max_history: the longest prompt, measured at the first size
TEXTS = ["<u_0> has rated <i_1> 5, <i_2> 4. Recommend a ranked page:",
         "<u_1> rated <i_3> 4 out of 5. Review: \"Nice quality for the price.\"",
         "<i_4> has title \"Camping Tent\", brand Acme, categories Sports > Outdoors."]


# ---------------------------------------------------------------------- memory probes (Linux)

def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _high_water() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def peak_above(fn):
    """(fn(), bytes the resident set peaked above where it was when fn started)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current resident set
    start = _rss()
    out = fn()
    return out, _high_water() - start


# ---------------------------------------------------------------------- one size (child process)

def measure_size(n_items: int, n_users: int, history: int, timed_users: int, long_step: bool) -> dict:
    import torch

    from pagellm.backbones import Backbone, TokenMap, banned_matrix, decode_many, load_backbone
    from pagellm.prompts import finetune_prompt
    from pagellm.sft import MAX_GRAD_NORM, list_nll, optimizer

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cpu = torch.device("cpu")
    out: dict = {"n_items": n_items, "n_users": n_users}

    t0 = CLOCK()
    backbone = load_backbone("gpt2-random", n_users, n_items, cpu, texts=TEXTS, seed=0)
    out["load_seconds"] = CLOCK() - t0
    base = backbone.base
    emb = base.get_input_embeddings().weight
    out["tied"] = emb is base.get_output_embeddings().weight
    out["vocab"], out["words"] = int(emb.shape[0]), int(backbone.tokens.user_start)
    out["params_total"] = sum(p.numel() for p in backbone.model.parameters())
    out["params_embedding"] = emb.numel()
    out["bytes_embedding"] = emb.numel() * emb.element_size()
    out["attn_implementation"] = getattr(base.config, "_attn_implementation", None)

    def examples(n: int, hist: int):
        users = rng.choice(n_users, n, replace=False)
        seen = [rng.choice(n_items, hist, replace=False).tolist() for _ in users]
        texts = [finetune_prompt(int(u), s, rng.integers(1, 6, hist).tolist()) for u, s in zip(users, seen)]
        return texts, seen

    texts, seen = examples(256, history)
    t0 = CLOCK()
    prompts = backbone.encode(texts)
    out["encode_seconds_per_prompt"] = (CLOCK() - t0) / len(texts)
    out["prompt_tokens"] = float(np.mean([len(p) for p in prompts[:FT_BATCH]]))

    # Two fine-tuning steps of the pipeline's functions; the second is measured (AdamW state exists).
    lists = [[i for i in rng.permutation(n_items)[:LIST_LEN + history].tolist() if i not in s][:LIST_LEN]
             for s in seen[:FT_BATCH]]
    params = backbone.parameters()
    opt = optimizer(params, 1e-4)
    backbone.model.train()

    def train_step():
        t_a = CLOCK()
        loss = list_nll(backbone, prompts[:FT_BATCH], lists, seen[:FT_BATCH])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t_b = CLOCK()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        opt.step()
        return t_b - t_a, CLOCK() - t_b

    train_step()
    opt.zero_grad(set_to_none=True)
    (fb, step_s), peak = peak_above(train_step)
    out["step_forward_backward_seconds"], out["step_optimizer_seconds"] = fb, step_s
    out["step_peak_bytes"] = peak  # gradients + activations + logits, above weights and AdamW state
    if long_step:  # the same step with the longest prompts: how activations grow with the length
        texts_long, seen_long = examples(FT_BATCH, LONG_HISTORY)
        prompts_long = backbone.encode(texts_long)
        prompts[:FT_BATCH], seen[:FT_BATCH] = prompts_long, seen_long
        lists[:] = [[i for i in rng.permutation(n_items)[:LIST_LEN + LONG_HISTORY].tolist() if i not in s][:LIST_LEN]
                    for s in seen_long]
        opt.zero_grad(set_to_none=True)
        (fb, _), out["step_long_peak_bytes"] = peak_above(train_step)
        out["step_long_forward_backward_seconds"] = fb
        out["step_long_prompt_tokens"] = float(np.mean([len(x) for x in prompts_long]))
    out["adamw_bytes"] = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                             if torch.is_tensor(t))
    out["adamw_bytes_embedding"] = sum(t.numel() * t.element_size() for t in opt.state[emb].values()
                                       if torch.is_tensor(t))
    out["grad_bytes"] = sum(p.numel() * p.element_size() for p in params)
    del opt
    backbone.model.eval()

    # Greedy top-100 decoding of `timed_users` users, and its item head alone.
    steps = min(TOP_K, n_items)
    t0 = CLOCK()
    decode_many(backbone, prompts[:timed_users], seen[:timed_users], steps, batch_size=timed_users)
    out["decode_seconds_per_user"] = (CLOCK() - t0) / timed_users
    h = torch.randn(timed_users, D)
    rows = torch.arange(timed_users)

    def head_alone() -> float:
        allowed = ~banned_matrix(seen[:timed_users], n_items, cpu)
        t0 = CLOCK()
        with torch.no_grad():
            for _ in range(steps):
                choice = backbone.item_logits(h).float().masked_fill(~allowed, float("-inf")).argmax(-1)
                allowed[rows, choice] = False
        return (CLOCK() - t0) / timed_users

    out["decode_head_seconds_per_user"] = min(head_alone() for _ in range(3))
    del backbone, base, emb, params
    gc.collect()

    # The item head alone: a frozen output layer of the real vocabulary size, hidden states in.
    class _Head(torch.nn.Module):
        def __init__(self, vocab: int):
            super().__init__()
            self.head = torch.nn.Linear(D, vocab, bias=False).requires_grad_(False)

        def get_output_embeddings(self):
            return self.head

    def probe(words: int) -> Backbone:
        vocab = words + n_users + n_items
        return Backbone("probe", _Head(vocab), None, TokenMap(words, n_users, words + n_users, n_items, vocab), cpu)

    out.update(item_logits_memory(probe(out["words"]), seen, lists))
    probe_gpt2 = probe(GPT2_WORDS)
    out.update(pretrain_logits_memory(probe_gpt2))
    return out


def item_logits_memory(probe, seen, lists) -> dict:
    """Peak bytes of the fine-tuning list loss on (B, T, N) logits (forward + backward to the
    hidden states) and of one decoding step on (RANK_BATCH, N) logits: `pagellm.sft.list_nll`
    and `decode_items` after the trunk."""
    import torch

    from pagellm.backbones import ListBatch, allowed_mask, banned_matrix, masked_log_probs

    n_items = probe.tokens.n_items
    batch = ListBatch.build([[0]] * len(lists), lists, probe.tokens, 0, probe.device)
    items, valid = batch.items, batch.list_mask
    h = torch.randn(*items.shape, D, requires_grad=True)

    def finetune_head():
        logits = probe.item_logits(h)
        allowed = allowed_mask(banned_matrix(seen[:len(lists)], n_items, probe.device), items)
        allowed[valid.nonzero(as_tuple=True) + (items[valid],)] = True
        logp = masked_log_probs(logits, allowed)
        nll = -logp.gather(-1, items.clamp(min=0)[..., None]).squeeze(-1)
        nll[valid].mean().backward()

    def decode_step():
        with torch.no_grad():
            last = torch.randn(RANK_BATCH, D)
            allowed = ~banned_matrix([s for s in seen[:RANK_BATCH]], n_items, probe.device)
            return probe.item_logits(last).float().masked_fill(~allowed, float("-inf")).argmax(-1)

    finetune_head()  # warm-up (allocator, kernels)
    _, ft_peak = peak_above(finetune_head)
    _, dec_peak = peak_above(decode_step)
    return {"finetune_logits_elements": items.numel() * n_items, "finetune_logits_peak_bytes": ft_peak,
            "decode_logits_elements": RANK_BATCH * n_items, "decode_logits_peak_bytes": dec_peak}


def pretrain_logits_memory(probe) -> dict:
    """Peak bytes of pre-training's full-vocabulary loss over PRE_POSITIONS positions (forward +
    backward to the hidden states), at once and in `token_loss`'s chunks."""
    import torch

    from pagellm.sft import MAX_LOGITS, token_loss

    vocab = probe.tokens.vocab_size
    h = torch.randn(PRE_POSITIONS, D, requires_grad=True)
    targets = torch.randint(vocab, (PRE_POSITIONS,))
    out = {"pretrain_vocab": vocab, "pretrain_logits_elements": PRE_POSITIONS * vocab}
    for name, limit in (("chunked", MAX_LOGITS), ("whole", 2**62)):
        _, out[f"pretrain_{name}_peak_bytes"] = peak_above(lambda: token_loss(probe, h, targets, limit).backward())
    return out


# ---------------------------------------------------------------------- fits and extrapolation

def fit(x, y) -> dict:
    """Least-squares line y = a + b x and its largest relative residual (linearity check)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    b, a = np.polyfit(x, y, 1)
    resid = np.max(np.abs(a + b * x - y) / np.maximum(np.abs(y), 1e-12))
    return {"a": float(a), "b": float(b), "max_rel_residual": float(resid)}


def extrapolate(rows: list[dict], users: int, items: int) -> dict:
    """Sports-size costs from the measured rows, by formulas of (users, items) whose constants
    are measured (or counted: 4 bytes per float32)."""
    n = [r["n_items"] for r in rows]
    vocab = [r["vocab"] for r in rows]
    trunk = int(np.median([r["params_total"] - r["params_embedding"] for r in rows]))
    v_target = GPT2_WORDS + users + items
    params = trunk + v_target * D
    ft = fit([r["finetune_logits_elements"] for r in rows], [r["finetune_logits_peak_bytes"] for r in rows])
    dec = fit([r["decode_logits_elements"] for r in rows], [r["decode_logits_peak_bytes"] for r in rows])
    pre_whole = fit([r["pretrain_logits_elements"] for r in rows], [r["pretrain_whole_peak_bytes"] for r in rows])
    pre_chunked = max(r["pretrain_chunked_peak_bytes"] for r in rows)
    copies_ft = ft["b"] / 4  # float32 (B, T, N) copies alive at the peak
    copies_pre = pre_whole["b"] / 4
    step_peak = fit(vocab, [r["step_peak_bytes"] for r in rows])
    # Activations per row of L tokens, c1 L + c2 L^2 (the square: attention scores), from the
    # first size's two steps: step peak - gradients - the item logits' share.
    first = rows[0]
    lengths = np.array([first["prompt_tokens"], first["step_long_prompt_tokens"]]) + LIST_LEN
    acts = np.array([first["step_peak_bytes"], first["step_long_peak_bytes"]]) - first["grad_bytes"] \
        - first["finetune_logits_peak_bytes"]
    c1, c2 = np.linalg.solve(np.c_[lengths, lengths**2], acts / FT_BATCH)

    def activations(batch: int, tokens: float, square: bool) -> float:
        """square=False: without the L^2 term, as with a memory-efficient attention kernel."""
        return batch * (c1 * tokens + (max(c2, 0.0) * tokens**2 if square else 0.0))
    adam = fit(vocab, [r["step_optimizer_seconds"] for r in rows])
    decode = fit(n, [r["decode_seconds_per_user"] for r in rows])
    head = fit(n, [r["decode_head_seconds_per_user"] for r in rows])
    # Decoding = the trunk (independent of N) + the item head (a product with N rows: taken as
    # proportional to N, from the largest size, where the item rows no longer fit a CPU cache).
    trunk_decode = float(np.median([r["decode_seconds_per_user"] - r["decode_head_seconds_per_user"] for r in rows]))
    head_per_item = rows[-1]["decode_head_seconds_per_user"] / rows[-1]["n_items"]
    load = fit([r["n_users"] + r["n_items"] for r in rows], [r["load_seconds"] for r in rows])
    encode = fit([r["n_users"] + r["n_items"] for r in rows], [r["encode_seconds_per_prompt"] for r in rows])
    tokens_typical, tokens_max = float(lengths[0]), MAX_PROMPT + LIST_LEN
    gb = 2**30
    ft_logits = copies_ft * 4 * FT_BATCH * LIST_LEN * items
    pre_whole_bytes = copies_pre * 4 * PRE_BATCH * MAX_PROMPT * v_target

    def peak(frozen_copies: int, transient: float) -> float:
        """float32 weights + AdamW moments (12 B/param) + gradients (4) + the larger of the
        forward/backward transient and AdamW's temporaries (torch's foreach AdamW, the CUDA
        default, holds one more model-sized tensor), + frozen float32 copies (4 B/param each)."""
        return 16 * params + max(transient, 4 * params) + 4 * params * frozen_copies

    cases = {  # name: (frozen float32 copies, batch, tokens per row, logits bytes)
        f"fine-tuning, B=16, {tokens_typical:.0f}-token rows ({first['prompt_tokens']:.0f}-token prompts + 20)":
            (0, FT_BATCH, tokens_typical, ft_logits),
        f"fine-tuning, B=16, {lengths[1]:.0f}-token rows (50-item history)": (0, FT_BATCH, lengths[1], ft_logits),
        "fine-tuning, B=16, 532-token rows (max_prompt_tokens 512 + 20)": (0, FT_BATCH, tokens_max, ft_logits),
        "pre-training, B=8 x 512 tokens, full-vocabulary logits at once (before `token_loss` chunked them)":
            (0, PRE_BATCH, MAX_PROMPT, pre_whole_bytes),
        "pre-training, B=8 x 512 tokens, chunked logits (`token_loss`)": (0, PRE_BATCH, MAX_PROMPT, pre_chunked),
        f"reward model, 16 pairs = 32 rows x {lengths[1]:.0f} tokens, item log-probs (32 x 20 x N)":
            (0, 2 * FT_BATCH, lengths[1], 2 * ft_logits),
        f"PPO, mixed: policy + frozen reference + 2 reward models, mini-batch 16 x {lengths[1]:.0f} tokens":
            (3, FT_BATCH, lengths[1], ft_logits),
        "PPO, mixed: policy + frozen reference + 2 reward models, mini-batch 16 x 532 tokens":
            (3, FT_BATCH, tokens_max, ft_logits),
    }
    budget = {name: {"with_square": peak(frozen, activations(b, t, True) + lg),
                     "without_square": peak(frozen, activations(b, t, False) + lg)}
              for name, (frozen, b, t, lg) in cases.items()}

    def largest_batch(frozen: int, batch: int, tokens: float, logits: float, square: bool) -> int:
        """The largest batch <= `batch` whose step fits GPU_BYTES (activations and logits scale with it); 0: none."""
        return max((b for b in range(1, batch + 1)
                    if peak(frozen, activations(b, tokens, square) + logits * b / batch) <= GPU_BYTES), default=0)

    batches = {name: {"with_square": largest_batch(frozen, b, t, lg, True),
                      "without_square": largest_batch(frozen, b, t, lg, False)}
               for name, (frozen, b, t, lg) in cases.items()}
    return {
        "users": users, "items": items, "vocab": v_target, "trunk_params": trunk, "params": params,
        "embedding_bytes": 4 * v_target * D, "new_rows_bytes": 4 * (users + items) * D,
        "adamw_embedding_bytes": 8 * v_target * D, "states_bytes": 16 * params,
        "finetune_logits_copies": copies_ft, "finetune_logits_bytes": ft_logits,
        "decode_logits_bytes": dec["a"] + dec["b"] * RANK_BATCH * items,
        "pretrain_logits_copies": copies_pre, "pretrain_whole_logits_bytes": pre_whole_bytes,
        "pretrain_chunked_logits_bytes": pre_chunked,
        "activations_per_row": {"c1_bytes_per_token": float(c1), "c2_bytes_per_token2": float(c2),
                                "measured_row_tokens": lengths.tolist(), "measured_bytes_per_row": (acts / FT_BATCH).tolist()},
        "optimizer_step_cpu_seconds": adam["a"] + adam["b"] * v_target,
        "decode_cpu_seconds_per_user": trunk_decode + head_per_item * items,
        "decode_head_cpu_seconds_per_user": head_per_item * items,
        "decode_cpu_hours_all_users": (trunk_decode + head_per_item * items) * users / 3600,
        "load_seconds": load["a"] + load["b"] * (users + items),
        "encode_seconds_per_prompt": max(r["encode_seconds_per_prompt"] for r in rows),
        "decode_head_gflop_per_user": 2 * D * items * TOP_K / 1e9,
        "budget_gib": {k: {kk: vv / gb for kk, vv in v.items()} for k, v in budget.items()},
        "fits": {k: {kk: bool(vv <= GPU_BYTES) for kk, vv in v.items()} for k, v in budget.items()},
        "largest_batch_that_fits": batches,
        "fits_linear": {"finetune_logits": ft, "decode_logits": dec, "pretrain_whole_logits": pre_whole,
                        "step_peak_vs_vocab": step_peak, "optimizer_seconds_vs_vocab": adam,
                        "decode_seconds_vs_items": decode, "decode_head_seconds_vs_items": head,
                        "load_seconds_vs_tokens": load, "encode_seconds_vs_tokens": encode},
    }


def report(rows: list[dict], ext: dict, args) -> str:
    mb = 2**20
    lines = ["# PageLLM: cost in the catalogue size", "",
             f"Measured on this machine (CPU, {os.cpu_count()} cores, OMP_NUM_THREADS="
             f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), `gpt2-random` (12 x 768-d), users = "
             f"{args.users_per_item} x items, prompts of {args.history} rated items, one run each; seconds are "
             "CPU seconds (process time), MB are MiB.", "",
             "| items | users | vocab | embedding MB (+ AdamW MB) | step fwd+bwd s | AdamW step s | step peak MB "
             "| FT logits peak MB (16x20xN) | decode-step logits peak MB (64xN) | pre-train logits peak MB, "
             "whole / chunked | top-100 decode s/user (head alone) | load s | encode ms/prompt |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['n_items']:,} | {r['n_users']:,} | {r['vocab']:,} | {r['bytes_embedding'] / mb:.0f} "
            f"(+{r['adamw_bytes_embedding'] / mb:.0f}) | {r['step_forward_backward_seconds']:.1f} | "
            f"{r['step_optimizer_seconds']:.2f} | {r['step_peak_bytes'] / mb:.0f} | "
            f"{r['finetune_logits_peak_bytes'] / mb:.1f} | {r['decode_logits_peak_bytes'] / mb:.1f} | "
            f"{r['pretrain_whole_peak_bytes'] / mb:.0f} / {r['pretrain_chunked_peak_bytes'] / mb:.0f} "
            f"(V = {r['pretrain_vocab']:,}) | {r['decode_seconds_per_user']:.2f} "
            f"({r['decode_head_seconds_per_user']:.3f}) | {r['load_seconds']:.1f} | "
            f"{1000 * r['encode_seconds_per_prompt']:.2f} |")
    f = ext["fits_linear"]
    lines += ["", "Linear fits y = a + b x over the sizes (largest relative residual: the linearity check):", ""]
    lines += [f"- {k}: a = {v['a']:.4g}, b = {v['b']:.4g}, residual {100 * v['max_rel_residual']:.1f}%"
              for k, v in f.items()]
    gib, act = 2**30, ext["activations_per_row"]
    lines += ["", f"## EXTRAPOLATION (not measured): {ext['items']:,} items, {ext['users']:,} users, GPT-2", "",
              f"- vocabulary V = 50,257 + users + items = {ext['vocab']:,}; parameters = trunk "
              f"{ext['trunk_params']:,} + V x 768 = {ext['params']:,}",
              f"- embedding (tied output layer) 4 V d = {ext['embedding_bytes'] / gib:.2f} GiB, of which the new "
              f"user/item rows {ext['new_rows_bytes'] / gib:.2f} GiB; AdamW moments of it 8 V d = "
              f"{ext['adamw_embedding_bytes'] / gib:.2f} GiB; weights + gradients + AdamW of the whole model "
              f"16 x parameters = {ext['states_bytes'] / gib:.2f} GiB",
              f"- fine-tuning item logits (16 x 20 x N): {ext['finetune_logits_copies']:.1f} float32 copies at the "
              f"peak (measured slope) = {ext['finetune_logits_bytes'] / gib:.2f} GiB",
              f"- decoding step logits (64 x N): {ext['decode_logits_bytes'] / 2**20:.0f} MiB",
              f"- pre-training full-vocabulary logits (8 x 512 positions x V): {ext['pretrain_logits_copies']:.1f} "
              f"copies = {ext['pretrain_whole_logits_bytes'] / gib:.1f} GiB at once; chunked (`token_loss`): "
              f"{ext['pretrain_chunked_logits_bytes'] / gib:.2f} GiB",
              f"- activations of a row of L tokens: c1 L + c2 L^2 with c1 = {act['c1_bytes_per_token'] / 2**20:.3f} MiB, "
              f"c2 = {act['c2_bytes_per_token2'] / 2**10:.2f} KiB (solved from rows of "
              f"{act['measured_row_tokens'][0]:.0f} and {act['measured_row_tokens'][1]:.0f} tokens: "
              f"{act['measured_bytes_per_row'][0] / 2**20:.0f} and {act['measured_bytes_per_row'][1] / 2**20:.0f} MiB "
              "per row; CPU, sdpa attention)",
              f"- AdamW + clip on this CPU: {ext['optimizer_step_cpu_seconds']:.1f} s per step",
              f"- top-100 decoding on this CPU: {ext['decode_cpu_seconds_per_user']:.2f} s per user = the trunk "
              f"(median over the sizes) + the item head ({ext['decode_head_cpu_seconds_per_user']:.2f} s, "
              f"{ext['decode_head_gflop_per_user']:.0f} GFLOP, proportional to N from the largest size); all "
              f"{ext['users']:,} users: {ext['decode_cpu_hours_all_users']:.0f} CPU hours",
              f"- building the backbone (adding {ext['users'] + ext['items']:,} tokens, initialising the rows): "
              f"{ext['load_seconds']:.0f} s; encoding at most {1000 * ext['encode_seconds_per_prompt']:.2f} ms per "
              "prompt (no growth measured)",
              "", "GPU memory at the peak of a training step (float32 weights + gradients + AdamW + the larger of "
              "activations + logits and AdamW's temporaries), against 24 GiB; activations with the L^2 term "
              "measured here (attention weights materialised, as on this CPU) and without it (a memory-efficient "
              "attention kernel); and the largest batch that fits:", "",
              "| step | GiB, with L^2 | GiB, without | batch that fits, with / without |", "|---|---|---|---|"]
    for k, v in ext["budget_gib"].items():
        fits, most = ext["fits"][k], ext["largest_batch_that_fits"][k]
        lines.append(f"| {k} | {v['with_square']:.1f}{'' if fits['with_square'] else ' (does NOT fit)'} | "
                     f"{v['without_square']:.1f}{'' if fits['without_square'] else ' (does NOT fit)'} | "
                     f"{most['with_square']} / {most['without_square']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/vocab", help="folder for vocab_cost.json and vocab_cost.md")
    parser.add_argument("--items", default="5000,20000,50000", help="comma-separated catalogue sizes")
    parser.add_argument("--users-per-item", type=float, default=1.0, help="users = items x this")
    parser.add_argument("--history", type=int, default=8, help="rated items in each prompt")
    parser.add_argument("--timed-users", type=int, default=16, help="users decoded for the time per user")
    parser.add_argument("--report-only", action="store_true",
                        help="re-read the measured rows of --out/vocab_cost.json; measure nothing")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one size, JSON to stdout
    parser.add_argument("--long-step", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        n_items, n_users = (int(x) for x in args.child.split(","))
        print(json.dumps(measure_size(n_items, n_users, args.history, args.timed_users, args.long_step)))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        rows = json.loads((out / "vocab_cost.json").read_text())["measured"]
    else:
        rows = measure(args)
    ext = extrapolate(rows, TARGET["users"], TARGET["items"])
    (out / "vocab_cost.json").write_text(json.dumps({"measured": rows, "extrapolated": ext}, indent=2))
    text = report(rows, ext, args)
    (out / "vocab_cost.md").write_text(text)
    print(text)
    return 0


def measure(args) -> list[dict]:
    """One fresh process per size; the rows are saved as they come (`--report-only` re-reads them)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    rows: list[dict] = []
    for k, n in enumerate(int(x) for x in args.items.split(",")):
        users = int(round(n * args.users_per_item))
        print(f"measuring {n:,} items, {users:,} users ...", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, __file__, "--child", f"{n},{users}", "--history", str(args.history),
                               "--timed-users", str(args.timed_users)] + (["--long-step"] if k == 0 else []),
                              env=env, check=True, stdout=subprocess.PIPE, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        (Path(args.out) / "vocab_cost.json").write_text(json.dumps({"measured": rows}, indent=2))
    return rows


if __name__ == "__main__":
    sys.exit(main())
