"""PageLLM's multi-grained reward (Section 5.2): a page-level and an item-level reward model,
trained with the Bradley-Terry loss on preference pairs, and their per-token placement for PPO.

Both reward models are the fine-tuned backbone (`pagellm.sft`) with a scalar head Linear(d, 1),
reading the prompt followed by the list's item tokens (`pagellm.backbones.ListBatch`):

    page  (eq. 5)  R_c = head(h at the last list token)                    (B,)
    item  (eq. 6)  r_t = head(h at list token t) [+ log p(item_t | prompt, items < t)],
                   R = mean_t r_t                                          (B, T) -> (B,)
    loss  (eq. 8)  -log sigmoid(R(chosen) - R(rejected)), mean over pairs  (the same form for both)
    mixed          R = R_page + item_weight * R_item                       (not trained: a sum)

Pairs: those of `pagellm.pairs`, i.e. the data module's four families (Appendix A.3) completed
to the rollout length, plus the on-policy families; both models train on every family. (The
paper keeps preference pairs for page-level supervision only, A.3.1; here their per-position
labels, 0 where a low-rated or random item was put, also train the item model: without them
the on-policy pairs, whose rejected items are the policy's own favourites, teach the item model
the shortcut "an item the policy would not pick is good", measured as held-out accuracy below
chance on the edit families.) `token_weight` > 0 (default 1) adds, for the item model only,
the paper's fine-grained signal: a per-token binary cross-entropy pulling sigmoid(r_t) towards
the pair's position labels (1 = the chosen item is kept there, 0 = it is not; positions
labelled -1 carry no token loss), beside eq. 8.

The bracketed term (`logprob`, on by default: `PageLLMConfig.rm_item_logprob`) is the item
model's own language-model score of the item in its place, from the LM head of its trunk (which
starts as the fine-tuned policy and trains with the reward model). Why: a linear head on h_t
alone must learn user-item relevance from scratch out of a few thousand pairs, and on held-out
pairs it stayed at or below chance (synthetic, tiny backbone: 0.45); with the term, the head
and the trunk learn a correction to a relevance score the trunk already computes (0.83 on the
same pairs). The page model keeps eq. 5 as written.

Accuracy = share of held-out pairs with R(chosen) > R(rejected) (a tie counts one half).

PPO rewards (`ListReward`), per generated list of T item tokens (design choices, documented):
- page score at the last list token;
- item scores r_t / T at each list token, so that their undiscounted sum is the eq.-6 mean;
- mixed: both, the item part times `item_weight`;
- normalisation (paper: "reward normalization"): each score kind is standardised by the running
  mean and standard deviation of that kind over all rollouts so far (page: one value per list;
  item: one per token), updated before use, so neither part dominates by scale alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from bench.training import epoch_bar
from pagellm.backbones import Backbone, ListBatch
from pagellm.sft import EpochLog, batches, optimizer, step

logger = logging.getLogger(__name__)

KINDS = ("page", "item")


def _module(backbone: Backbone, kind: str, logprob: bool = False):
    import torch
    from torch import nn

    class RewardModel(nn.Module):
        """Backbone + scalar head; forward(prompts, lists) -> (R (B,), r (B, T) or None, mask (B, T))."""

        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone
            self.kind = kind
            self.head = nn.Linear(backbone.hidden_size, 1).to(backbone.device)
            nn.init.normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
            self.trunk = backbone.model  # registered so that .parameters() includes the LM
            self.logprob = logprob

        def forward(self, prompts: Sequence[Sequence[int]], lists):
            bb = self.backbone
            batch = ListBatch.build(prompts, lists, bb.tokens, bb.pad_id, bb.device)
            p, t = batch.prompt_len, batch.items.shape[1]
            h = bb.hidden(batch.input_ids, batch.attention_mask, batch.position_ids)
            mask = batch.list_mask
            if self.kind == "page":
                last = (p + mask.sum(1) - 1).clamp(min=0)
                score = self.head(h[torch.arange(h.shape[0], device=h.device), last].float()).squeeze(-1)
                return score, None, mask
            tokens = self.head(h[:, p:p + t].float()).squeeze(-1)
            if self.logprob:
                # + log p(item_t | prompt, items < t) under the trunk's own LM head (see the docstring)
                logp = bb.item_logits(h[:, p - 1:p - 1 + t]).float().log_softmax(-1)
                tokens = tokens + logp.gather(-1, batch.items.clamp(min=0)[..., None]).squeeze(-1)
            tokens = tokens * mask
            return tokens.sum(1) / mask.sum(1).clamp(min=1), tokens, mask

    return RewardModel()


class RewardModels:
    """The trained page and/or item reward models of a run (either may be None)."""

    def __init__(self, page=None, item=None):
        self.page, self.item = page, item

    def scores(self, prompts: Sequence[Sequence[int]], lists, item_weight: float = 1.0) -> dict:
        """Sequence rewards (B,) of each available kind, and "mixed" when both are."""
        import torch

        out = {}
        with torch.no_grad():
            for kind, rm in (("page", self.page), ("item", self.item)):
                if rm is not None:
                    out[kind] = rm(prompts, lists)[0]
        if "page" in out and "item" in out:
            out["mixed"] = out["page"] + item_weight * out["item"]
        return out


def new_reward_model(backbone: Backbone, kind: str, logprob: bool = False):
    if kind not in KINDS:
        raise ValueError(f"reward kind must be one of {KINDS}, not {kind!r}")
    return _module(backbone, kind, logprob)


def train_reward_model(rm, pairs: Sequence, prompt_ids: Mapping[int, list[int]], *, epochs: int, batch_size: int,
                       lr: float, token_weight: float = 0.0, generator=None, valid_pairs: Sequence = (),
                       patience: int = 0) -> EpochLog:
    """Bradley-Terry training (eq. 8) of `rm` on `pairs` (PreferencePair, prompts by user).

    With `valid_pairs` (pairs of users apart from `pairs`) and `patience` > 0, the pair accuracy
    on them is measured after every epoch, training stops after `patience` epochs without a
    better one, and the best epoch's weights are restored (ties keep the earlier epoch): the
    number of epochs is chosen on validation pairs, never on the reported held-out pairs."""
    import torch.nn.functional as F

    from bench.training import EarlyStopping, clone_state

    params = list(rm.parameters())
    opt = optimizer(params, lr)
    log = EpochLog()
    pairs = [p for p in pairs if p.user in prompt_ids and p.chosen and p.rejected]
    stopper = EarlyStopping(patience, snapshot=lambda: clone_state(rm)) if valid_pairs and patience > 0 else None
    for epoch in epoch_bar(epochs, "pagellm reward model"):
        rm.train()
        t0 = time.perf_counter()
        total, correct, n = 0.0, 0.0, 0
        for idx in batches(len(pairs), batch_size, generator):
            rows = [pairs[i] for i in idx.tolist()]
            prompts = [prompt_ids[r.user] for r in rows]
            # Chosen and rejected in one forward pass: (2B, T).
            score, tokens, mask = rm(prompts + prompts, [r.chosen for r in rows] + [r.rejected for r in rows])
            b = len(rows)
            margin = score[:b] - score[b:]
            loss = -F.logsigmoid(margin).mean()
            if token_weight > 0 and tokens is not None:
                labels = _labels([r.chosen_labels for r in rows] + [r.rejected_labels for r in rows], tokens.shape,
                                 tokens.device)
                known = mask & (labels >= 0)
                if known.any():
                    bce = F.binary_cross_entropy_with_logits(tokens, labels.clamp(min=0), reduction="none")
                    loss = loss + token_weight * bce[known].mean()
            step(opt, loss, params)
            margin = margin.detach()
            total += float(loss.detach()) * b
            correct += float((margin > 0).float().sum() + 0.5 * (margin == 0).float().sum())
            n += b
        seconds = time.perf_counter() - t0
        rm.eval()
        valid = pair_accuracy(RewardModels(**{rm.kind: rm}), valid_pairs, prompt_ids)[rm.kind]["all"] \
            if stopper else None
        log.add(seconds, bt_loss=total / max(n, 1), train_accuracy=correct / max(n, 1),
                **({"valid_accuracy": valid} if stopper else {}))
        logger.info("%s reward model epoch %d: %s", rm.kind, len(log.epochs) - 1, log.epochs[-1])
        if stopper and stopper.update(epoch, valid):
            break
    if stopper and stopper.best_state is not None:
        rm.load_state_dict(stopper.best_state)
        log.best_epoch = stopper.best_epoch
    rm.eval()
    return log


def _labels(rows: Sequence[Sequence[int]], shape, device):
    """(rows of 1 / 0 / -1 labels) -> (B, T) float tensor, -1 (no label) beyond each row."""
    import torch

    out = torch.full(shape, -1.0, device=device)
    for r, labels in enumerate(rows):
        out[r, :len(labels)] = torch.as_tensor(labels, dtype=torch.float32, device=device)
    return out


def pair_accuracy(models: RewardModels, pairs: Sequence, prompt_ids: Mapping[int, list[int]], *,
                  item_weight: float = 1.0, batch_size: int = 32) -> dict:
    """Held-out accuracy of each reward kind: {"page": {"all": acc, "<family>": acc, "n": ...}, ...}."""
    import torch

    pairs = [p for p in pairs if p.user in prompt_ids and p.chosen and p.rejected]
    margins: dict[str, list] = {}
    for start in range(0, len(pairs), batch_size):
        rows = pairs[start:start + batch_size]
        prompts = [prompt_ids[r.user] for r in rows]
        chosen = models.scores(prompts, [r.chosen for r in rows], item_weight)
        rejected = models.scores(prompts, [r.rejected for r in rows], item_weight)
        for kind in chosen:
            margins.setdefault(kind, []).append((chosen[kind] - rejected[kind]).cpu())
    families = np.array([p.kind for p in pairs])
    out = {}
    for kind, parts in margins.items():
        m = torch.cat(parts).numpy()
        hit = (m > 0) + 0.5 * (m == 0)
        out[kind] = {"all": round(float(hit.mean()), 4), "n": int(len(m))}
        for family in sorted(set(families)):
            sel = families == family
            out[kind][family] = round(float(hit[sel].mean()), 4)
    return out


class RunningMoments:
    """Running mean and standard deviation (Chan et al.'s parallel update) of a stream of values."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()
        if values.size == 0:
            return
        n, mean, m2 = values.size, float(values.mean()), float(((values - values.mean()) ** 2).sum())
        delta, total = mean - self.mean, self.n + n
        self.mean += delta * n / total
        self.m2 += m2 + delta ** 2 * self.n * n / total
        self.n = total

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.n)) if self.n > 1 else 1.0

    def normalise(self, x):
        return (x - self.mean) / max(self.std, 1e-6)


@dataclass
class ListReward:
    """Per-token PPO rewards from the reward models (see the module docstring).

    variant: "mixed" | "page" | "item". Call: (prompts, items (B, T), -1 = padding) ->
    (rewards (B, T) float, stats {"score": mean raw sequence reward of the variant, ...}).
    """

    models: RewardModels
    variant: str
    item_weight: float = 1.0
    normalize: bool = True

    def __post_init__(self) -> None:
        needed = {"mixed": ("page", "item"), "page": ("page",), "item": ("item",)}[self.variant]
        missing = [k for k in needed if getattr(self.models, k) is None]
        if missing:
            raise ValueError(f"the {self.variant} reward needs the {', '.join(missing)} reward model(s)")
        self.page_moments, self.item_moments = RunningMoments(), RunningMoments()

    def sequence_score(self, prompts: Sequence[Sequence[int]], items):
        """(B,) raw sequence reward of the variant (R_page + w R_item, R_page or R_item), with no
        normalisation and no update of the running moments: for monitoring PPO."""
        import torch

        raw = torch.zeros(items.shape[0], device=items.device)
        with torch.no_grad():
            if self.variant in ("mixed", "item"):
                raw = raw + (self.item_weight if self.variant == "mixed" else 1.0) * self.models.item(prompts, items)[0]
            if self.variant in ("mixed", "page"):
                raw = raw + self.models.page(prompts, items)[0]
        return raw

    def __call__(self, prompts: Sequence[Sequence[int]], items):
        import torch

        mask = items >= 0
        rewards = torch.zeros(items.shape, device=items.device)
        raw = torch.zeros(items.shape[0], device=items.device)
        n = mask.sum(1)
        with torch.no_grad():
            if self.variant in ("mixed", "item"):
                seq, tokens, _ = self.models.item(prompts, items)
                weight = self.item_weight if self.variant == "mixed" else 1.0
                raw = raw + weight * seq
                if self.normalize:
                    self.item_moments.update(tokens[mask].cpu().numpy())
                    tokens = self.item_moments.normalise(tokens)
                rewards = rewards + weight * tokens * mask / n.clamp(min=1)[:, None]
            if self.variant in ("mixed", "page"):
                seq = self.models.page(prompts, items)[0]
                raw = raw + seq
                if self.normalize:
                    self.page_moments.update(seq.cpu().numpy())
                    seq = self.page_moments.normalise(seq)
                last = (n - 1).clamp(min=0)
                rows = torch.arange(items.shape[0], device=items.device)
                rewards[rows, last] += seq * (n > 0)
        return rewards, {"score": float(raw.mean())}
