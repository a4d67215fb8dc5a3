"""PageLLM supervised stages (Section 5.1): meta-information pre-training and ground-truth
fine-tuning, plus the small training helpers the reward and PPO stages share.

Pre-training (5.1.2), one step = one batch of each task, summed:

    L = L_next + rating_weight * L_rating
    L_next   (eq. 3)  mean next-token cross-entropy over the real tokens of the pre-training texts
                      (Appendix B.1 prompts with user/item tokens), full vocabulary
    L_rating (eq. 2)  mean (r - head(h_last))^2, h_last (B, d) = the last hidden state of the rating
                      prompt, head = Linear(d, 1) whose bias starts at the mean training rating

Fine-tuning (5.1.3, eq. 4): -log p(label list | prompt), summed over the list positions and
averaged over them (mean per list token), where the probability of each list item is the softmax
over the item tokens that are still allowed there (not in the prompt's input items, not earlier
in the list): the SAME restricted distribution as ranking and PPO (`pagellm.backbones`), so the
fine-tuned model is exactly the policy PPO starts from. Prompt tokens carry no loss.

An epoch is one pass over the texts (pre-training; rating prompts are cycled alongside, so an
epoch also sees every rating prompt at least once) or over the users with a label list
(fine-tuning), in a seeded random order. AdamW, constant learning rate, gradient norm clipped.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from bench.training import epoch_bar
from pagellm.backbones import Backbone, ListBatch, allowed_mask, banned_matrix, masked_log_probs

logger = logging.getLogger(__name__)

MAX_GRAD_NORM = 1.0
# Logits computed at once by the full-vocabulary loss (`token_loss`): 2^26 floats = 256 MiB each copy.
MAX_LOGITS = 2**26


def batches(n: int, batch_size: int, generator) -> list:
    """A seeded random partition of range(n) into index tensors of at most `batch_size`."""
    import torch

    order = torch.randperm(n, generator=generator)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def optimizer(params, lr: float, weight_decay: float = 0.0):
    import torch

    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, weight_decay=weight_decay)


def step(opt, loss, params) -> None:
    import torch

    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in params if p.requires_grad], MAX_GRAD_NORM)
    opt.step()


def right_padded(seqs: Sequence[Sequence[int]], pad_id: int, device):
    """(B, L) input_ids, attention_mask, position_ids of token lists padded on the right."""
    import torch

    length = max(len(s) for s in seqs)
    ids = np.full((len(seqs), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), length), dtype=np.int64)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = s
        mask[r, :len(s)] = 1
    ids, mask = torch.as_tensor(ids, device=device), torch.as_tensor(mask, device=device)
    return ids, mask, (mask.cumsum(1) - 1).clamp(min=0)


def last_hidden(backbone: Backbone, seqs: Sequence[Sequence[int]]):
    """(B, d) hidden state at the last real token of each sequence."""
    import torch

    ids, mask, pos = right_padded(seqs, backbone.pad_id, backbone.device)
    h = backbone.hidden(ids, mask, pos)
    return h[torch.arange(len(seqs), device=h.device), mask.sum(1) - 1]


def next_token_loss(backbone: Backbone, seqs: Sequence[Sequence[int]]):
    """Mean cross-entropy of every real token given the ones before it (eq. 3)."""
    ids, mask, pos = right_padded(seqs, backbone.pad_id, backbone.device)
    h = backbone.hidden(ids, mask, pos)
    keep = (mask[:, 1:] & mask[:, :-1]).bool()
    # Logits only where a target exists: the full-vocabulary product is the memory peak.
    return token_loss(backbone, h[:, :-1][keep], ids[:, 1:][keep])


def token_loss(backbone: Backbone, states, targets, max_logits: int = MAX_LOGITS):
    """Mean full-vocabulary cross-entropy: (M, d) hidden states, (M,) target token ids -> scalar.

    The vocabulary holds a token per user and per item (V = words + users + items: about 486k
    for Amazon Sports with GPT-2), so the (M, V) logits of a batch, with their log-softmax and
    gradients, can outgrow a GPU (docs/performance.md, "PageLLM at 104k items"). When M x V
    exceeds `max_logits`, the positions are taken in chunks whose logits are recomputed in the
    backward pass instead of kept (activation checkpointing): the peak is one chunk's, the loss
    and gradients are the same up to rounding."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    vocab = backbone.tokens.vocab_size
    if len(targets) * vocab <= max_logits:
        return F.cross_entropy(backbone.token_logits(states).float(), targets)

    def chunk_sum(h, t):
        return F.cross_entropy(backbone.token_logits(h).float(), t, reduction="sum")

    size = max(1, max_logits // vocab)
    total = torch.zeros((), device=states.device)
    for start in range(0, len(targets), size):
        total = total + checkpoint(chunk_sum, states[start:start + size], targets[start:start + size],
                                   use_reentrant=False)
    return total / len(targets)


def list_nll(backbone: Backbone, prompts: Sequence[Sequence[int]], lists: Sequence[Sequence[int]],
             banned_rows: Sequence[Sequence[int]]):
    """Mean -log p(item) over the real list positions (eq. 4), each item drawn from the item tokens
    allowed at its position. prompts: B token-id lists; lists: B item lists; banned_rows: B item lists."""
    device = backbone.device
    batch = ListBatch.build(prompts, lists, backbone.tokens, backbone.pad_id, device)
    items, p, t = batch.items, batch.prompt_len, batch.items.shape[1]
    h = backbone.hidden(batch.input_ids, batch.attention_mask, batch.position_ids)
    logits = backbone.item_logits(h[:, p - 1:p - 1 + t])  # (B, T, N)
    allowed = allowed_mask(banned_matrix(banned_rows, backbone.tokens.n_items, device), items)
    # A target is always allowed, even if the data put it in the prompt too: the loss stays finite.
    valid = batch.list_mask
    allowed[valid.nonzero(as_tuple=True) + (items[valid],)] = True
    logp = masked_log_probs(logits, allowed)
    nll = -logp.gather(-1, items.clamp(min=0)[..., None]).squeeze(-1)
    return nll[valid].mean()


@dataclass
class EpochLog:
    """Per-epoch records of a stage: seconds and mean losses."""

    epochs: list

    def __init__(self) -> None:
        self.epochs = []
        self.best_epoch: int | None = None  # set by a stage that restores its best epoch

    def add(self, seconds: float, **values: float) -> None:
        from bench.progress import note

        self.epochs.append({"epoch": len(self.epochs), "seconds": round(seconds, 3),
                            **{k: (round(float(v), 6) if v == v else None) for k, v in values.items()}})
        note(**values)  # beside the stage's epoch bar

    def summary(self) -> dict:
        seconds = [e["seconds"] for e in self.epochs]
        out = {"epochs": self.epochs, "seconds_per_epoch": round(float(np.mean(seconds)), 3) if seconds else None}
        return {**out, "best_epoch": self.best_epoch} if self.best_epoch is not None else out


def pretrain(backbone: Backbone, texts: Sequence[str], ratings: Sequence[tuple[int, int, float, str]], *,
             epochs: int, batch_size: int, lr: float, rating_weight: float, max_tokens: int, generator):
    """Meta-information pre-training (eq. 2 + 3). Returns (rating head, EpochLog).

    texts: pre-training texts; ratings: (user, item, rating, rating prompt) tuples.
    """
    import torch

    device = backbone.device
    text_ids = [ids for ids in backbone.encode(texts, max_tokens) if len(ids) >= 2]
    rating_ids = backbone.encode([r[3] for r in ratings], max_tokens)
    targets = torch.tensor([float(r[2]) for r in ratings], device=device)
    keep = [i for i, ids in enumerate(rating_ids) if ids and not math.isnan(float(ratings[i][2]))]
    rating_ids, targets = [rating_ids[i] for i in keep], targets[keep] if keep else targets[:0]
    head = torch.nn.Linear(backbone.hidden_size, 1).to(device)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.02)
        head.bias.fill_(float(targets.mean()) if len(targets) else 0.0)
    params = backbone.parameters() + list(head.parameters())
    opt = optimizer(params, lr)
    log = EpochLog()
    backbone.model.train()
    for _ in epoch_bar(epochs, "pagellm pre-training"):
        t0 = time.perf_counter()
        text_batches = batches(len(text_ids), batch_size, generator) if text_ids else []
        rating_batches = batches(len(rating_ids), batch_size, generator) if rating_ids else []
        n_steps = max(len(text_batches), len(rating_batches))
        lm_sum = mse_sum = 0.0
        for s in range(n_steps):
            loss = torch.zeros((), device=device)
            if text_batches:
                lm = next_token_loss(backbone, [text_ids[i] for i in text_batches[s % len(text_batches)]])
                loss, lm_sum = loss + lm, lm_sum + float(lm.detach())
            if rating_batches and rating_weight > 0:
                idx = rating_batches[s % len(rating_batches)]
                pred = head(last_hidden(backbone, [rating_ids[i] for i in idx]).float()).squeeze(-1)
                mse = torch.mean((pred - targets[idx.to(device)]) ** 2)
                loss, mse_sum = loss + rating_weight * mse, mse_sum + float(mse.detach())
            if n_steps and loss.requires_grad:
                step(opt, loss, params)
        log.add(time.perf_counter() - t0, next_token_loss=lm_sum / max(n_steps, 1),
                rating_mse=mse_sum / max(n_steps, 1))
        logger.info("pre-training epoch %d: %s", len(log.epochs) - 1, log.epochs[-1])
    backbone.model.eval()
    return head, log


@dataclass
class ListExample:
    """One user's fine-tuning example: prompt token ids, target item list, items banned from it."""

    user: int
    prompt: list[int]
    items: list[int]
    banned: list[int]


def finetune(backbone: Backbone, examples: Sequence[ListExample], *, epochs: int, batch_size: int, lr: float,
             generator, on_epoch_end: Callable[[int], bool] | None = None) -> EpochLog:
    """Ground-truth fine-tuning (eq. 4). `on_epoch_end(epoch)` returns True to stop early
    (the caller owns validation and restoring the best state)."""
    params = backbone.parameters()
    opt = optimizer(params, lr)
    log = EpochLog()
    for epoch in epoch_bar(epochs, "pagellm fine-tuning"):
        backbone.model.train()
        t0 = time.perf_counter()
        total = 0.0
        parts = batches(len(examples), batch_size, generator)
        for idx in parts:
            rows = [examples[i] for i in idx.tolist()]
            loss = list_nll(backbone, [r.prompt for r in rows], [r.items for r in rows], [r.banned for r in rows])
            step(opt, loss, params)
            total += float(loss.detach())
        seconds = time.perf_counter() - t0
        backbone.model.eval()
        stop = on_epoch_end(epoch) if on_epoch_end is not None else False
        log.add(seconds, list_nll=total / max(len(parts), 1))
        logger.info("fine-tuning epoch %d: %s", epoch, log.epochs[-1])
        if stop:
            break
    backbone.model.eval()
    return log
