"""PPO over item lists (Section 5.3, eq. 9-11; Appendix D.2), written by hand.

Why not TRL: its PPO puts the reward on the last token only, builds its own generation config
(no item-only constraint) and takes old log-probs from processed generation scores, so the
action space in rollout and update would differ (docs/dependencies.md). Here the actions are
item tokens only, and ONE restricted distribution (`pagellm.backbones`: the item columns of the
LM head, minus the prompt's items and the items already in the list) is used in rollout, update,
KL and entropy.

One PPO iteration on a batch of B prompts (T = `list_len`, N = n_items, d = hidden size):

    rollout   items (B, T) sampled at `temperature` from the restricted policy (no repeats)
    forward   logp_old (B, T), values (B, T) from the policy; logp_ref (B, T) from the frozen
              reference (the fine-tuned model; with LoRA, the policy with adapters disabled)
    rewards   r_t = score_t - kl_coef * (logp_old - logp_ref)_t        per-token KL penalty
              score_t: per-token reward-model scores (`pagellm.reward.ListReward`), or any
              callable (prompts, items) -> ((B, T) rewards, stats)
    GAE       delta_t = r_t + gamma V_{t+1} - V_t (V_T = 0), A_t = delta_t + gamma lam A_{t+1};
              returns = A + V; A whitened over the batch's list tokens
    update    `inner_epochs` passes over mini-batches of rows:
              ratio = exp(logp - logp_old)
              L_pg = mean max(-A ratio, -A clip(ratio, 1 - clip_range, 1 + clip_range))
              L_v  = mean 0.5 max((V - R)^2, (V_old + clip(V - V_old, +-clip_range_value) - R)^2)
              L    = L_pg + vf_coef L_v - ent_coef H

The value head is Linear(d, 1) (zero-initialised) on the policy's own final hidden state at the
position that chooses each item (a shared trunk, as in TRL's value-head models): V(s_t) reads
the prompt and the items before t. Dropout is off in every PPO forward pass, so the first
ratio of a batch is 1 and the KL of the untouched policy is 0.

An epoch is one pass over the training prompts in batches of `batch_size`.

Rollouts sample from the policy at `temperature` (below 1 by default outside the paper preset:
a freshly fine-tuned policy is close to flat over thousands of items, so samples at
temperature 1 move the tail while the greedy page is set by the head). The tempered
distribution softmax(logits / temperature) IS the policy everywhere: rollout, update, KL to
the reference and entropy, so the importance ratio is exact (top-k or nucleus truncation would
make the sampling distribution differ from the one updated, so they are not offered).

KL coefficient: fixed (`kl_target` = 0), or adaptive (Ziegler et al. 2019, Section 2.2, as in
TRL's AdaptiveKLController): after each rollout, with KL = the mean over lists of
sum_t (logp - logp_ref), e = clip(KL / kl_target - 1, -0.2, 0.2) and
kl_coef <- kl_coef * (1 + e * B / kl_horizon), B the rollout's number of lists.

Monitoring (`PPOTrainer.train(..., monitor=...)`): before the first update and after each
epoch, the greedy lists (length `list_len`) of a fixed set of prompts are decoded from the
current policy and scored by the reward's raw sequence score (`reward_fn.sequence_score` when
it has one, else the sum of its per-token rewards); the fine-tuned policy's greedy lists of the
same prompts are kept from the first pass. One row per epoch (row 0 = before any update):
reward_greedy_sft, reward_greedy, jaccard20_sft (mean Jaccard of the two greedy top-20 lists),
and the epoch's update statistics approx_kl, clipfrac, entropy, vf_loss, kl, kl_coef, score.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from bench.training import epoch_bar
from pagellm.backbones import Backbone, ListBatch, allowed_mask, decode_items, masked_entropy, masked_log_probs
from pagellm.sft import EpochLog, MAX_GRAD_NORM

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PPOSettings:
    epochs: int = 5              # paper (D.2): 5 epochs
    batch_size: int = 64         # paper: 64 prompts per PPO batch
    mini_batch_size: int = 16
    inner_epochs: int = 4
    list_len: int = 20
    lr: float = 1e-5             # paper: 1e-5
    kl_coef: float = 0.05
    clip_range: float = 0.2      # paper: 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    ent_coef: float = 0.0
    gamma: float = 1.0           # paper (5.2.2): gamma = 1
    lam: float = 0.95
    temperature: float = 1.0
    kl_target: float = 0.0       # > 0: adaptive KL coefficient aiming at this KL per list
    kl_horizon: int = 10000


def value_head(backbone: Backbone):
    from torch import nn

    head = nn.Linear(backbone.hidden_size, 1).to(backbone.device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def gae(rewards, values, mask, gamma: float, lam: float):
    """(B, T) rewards, values, bool mask (valid steps form a prefix of each row) -> (advantages, returns)."""
    import torch

    b, t = rewards.shape
    adv = torch.zeros_like(rewards)
    running = torch.zeros(b, device=rewards.device)
    next_value = torch.zeros(b, device=rewards.device)
    m = mask.float()
    for i in reversed(range(t)):
        delta = rewards[:, i] + gamma * next_value * m[:, i] - values[:, i]
        running = (delta + gamma * lam * running) * m[:, i]
        adv[:, i] = running
        next_value = values[:, i] * m[:, i]
    return adv, adv + values


class AdaptiveKLController:
    """Ziegler et al. 2019's proportional controller of the KL coefficient (module docstring)."""

    def __init__(self, value: float, target: float, horizon: int) -> None:
        self.value, self.target, self.horizon = float(value), float(target), int(horizon)

    def update(self, kl: float, n_lists: int) -> None:
        if self.target <= 0:
            return
        error = float(np.clip(kl / self.target - 1.0, -0.2, 0.2))
        self.value *= 1.0 + error * n_lists / self.horizon


def jaccard_at(a, b, k: int = 20) -> np.ndarray:
    """(B, T) item lists (-1 = padding), twice -> (B,) Jaccard of the two top-k item sets."""
    out = []
    for x, y in zip(np.asarray(a)[:, :k].tolist(), np.asarray(b)[:, :k].tolist()):
        sx, sy = {i for i in x if i >= 0}, {i for i in y if i >= 0}
        out.append(len(sx & sy) / len(sx | sy) if sx | sy else 1.0)
    return np.asarray(out, dtype=np.float64)


def _whiten(x, mask):
    sel = x[mask]
    if sel.numel() < 2:
        return x - sel.mean() if sel.numel() else x
    return ((x - sel.mean()) / (sel.std() + 1e-8)) * mask


class PPOTrainer:
    """policy: the fine-tuned backbone (trained in place); reward_fn: (prompts, items) -> ((B, T), stats)."""

    def __init__(self, policy: Backbone, reward_fn: Callable, settings: PPOSettings, *, seed: int = 0,
                 reference: Backbone | None = None):
        import torch

        self.policy, self.reward_fn, self.s = policy, reward_fn, settings
        # Sampling draws on the model's device; shuffling on the CPU: one seeded generator each.
        self.generator = torch.Generator(device=policy.device).manual_seed(seed)
        self.cpu_generator = torch.Generator().manual_seed(seed + 1)
        # With LoRA the reference is the same weights with adapters off: no second copy in memory.
        self.reference = None if policy.lora else (reference or _frozen_copy(policy))
        self.value = value_head(policy)
        self.params = policy.parameters(trainable_only=True) + list(self.value.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=settings.lr)
        self.kl = AdaptiveKLController(settings.kl_coef, settings.kl_target, settings.kl_horizon)

    # ------------------------------------------------------------------ forward passes
    def _forward(self, backbone: Backbone, batch: ListBatch, banned, with_values: bool):
        """Restricted log-probs (B, T, N), allowed (B, T, N), values (B, T) or None."""
        p, t = batch.prompt_len, batch.items.shape[1]
        h = backbone.hidden(batch.input_ids, batch.attention_mask, batch.position_ids)
        states = h[:, p - 1:p - 1 + t]
        allowed = allowed_mask(banned, batch.items)
        logp = masked_log_probs(backbone.item_logits(states) / self.s.temperature, allowed)
        values = self.value(states.float()).squeeze(-1) if with_values else None
        return logp, allowed, values

    def _reference_logp(self, batch: ListBatch, banned):
        if self.reference is not None:
            return self._forward(self.reference, batch, banned, False)[0]
        with self.policy.model.disable_adapter():
            return self._forward(self.policy, batch, banned, False)[0]

    # ------------------------------------------------------------------ one iteration
    def rollout(self, prompts: Sequence[Sequence[int]], banned) -> dict:
        """Sample lists and compute everything the update needs (no gradients)."""
        import torch

        self.policy.model.eval()
        with torch.no_grad():
            items = decode_items(self.policy, prompts, banned, self.s.list_len, sample=True,
                                 temperature=self.s.temperature, generator=self.generator)
            batch = ListBatch.build(prompts, items, self.policy.tokens, self.policy.pad_id, self.policy.device)
            mask = batch.list_mask
            logp, _, values = self._forward(self.policy, batch, banned, True)
            old = _taken(logp, items)
            ref = _taken(self._reference_logp(batch, banned), items)
            scores, reward_stats = self.reward_fn(prompts, items)
            kl = (old - ref) * mask
            rewards = scores * mask - self.kl.value * kl
            adv, returns = gae(rewards, values * mask, mask, self.s.gamma, self.s.lam)
            adv = _whiten(adv, mask)
        return {"batch": batch, "banned": banned, "items": items, "mask": mask, "logp": old, "values": values * mask,
                "advantages": adv, "returns": returns,
                "stats": {"score": reward_stats.get("score", float((scores * mask).sum(1).mean())),
                          "token_reward": float((scores * mask).sum(1).mean()),
                          "kl": float(kl.sum(1).mean()), "list_len": float(mask.sum(1).float().mean())}}

    def update(self, ro: dict) -> dict:
        """`inner_epochs` passes of clipped PPO over mini-batches of the rollout's rows."""
        import torch

        s = self.s
        b = ro["items"].shape[0]
        records = []
        for _ in range(s.inner_epochs):
            order = torch.randperm(b, generator=self.cpu_generator)
            for start in range(0, b, s.mini_batch_size):
                idx = order[start:start + s.mini_batch_size].to(ro["items"].device)
                batch = _rows(ro["batch"], idx)
                mask = ro["mask"][idx]
                if not mask.any():
                    continue
                logp_all, allowed, values = self._forward(self.policy, batch, ro["banned"][idx], True)
                logp = _taken(logp_all, batch.items)
                adv, ret, old, old_v = ro["advantages"][idx], ro["returns"][idx], ro["logp"][idx], ro["values"][idx]
                ratio = torch.exp((logp - old).masked_fill(~mask, 0.0))
                pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - s.clip_range, 1 + s.clip_range))[mask].mean()
                v_clip = old_v + (values - old_v).clamp(-s.clip_range_value, s.clip_range_value)
                vf = 0.5 * torch.max((values - ret) ** 2, (v_clip - ret) ** 2)[mask].mean()
                loss = pg + s.vf_coef * vf
                if s.ent_coef > 0:
                    entropy = masked_entropy(logp_all, allowed)[mask].mean()
                    loss = loss - s.ent_coef * entropy
                else:
                    with torch.no_grad():
                        entropy = masked_entropy(logp_all, allowed)[mask].mean()
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
                self.opt.step()
                with torch.no_grad():
                    records.append({"pg_loss": float(pg), "vf_loss": float(vf), "entropy": float(entropy),
                                    "approx_kl": float((0.5 * (logp - old) ** 2)[mask].mean()),
                                    "clipfrac": float(((ratio - 1).abs() > s.clip_range)[mask].float().mean())})
        return {k: float(np.mean([r[k] for r in records])) for k in records[0]} if records else {}

    def step(self, prompts: Sequence[Sequence[int]], banned) -> dict:
        ro = self.rollout(prompts, banned)
        stats = {**ro["stats"], **self.update(ro)}
        self.kl.update(stats["kl"], len(prompts))
        return {**stats, "kl_coef": self.kl.value}

    def greedy_lists(self, prompts: Sequence[Sequence[int]], banned_rows: Sequence[Sequence[int]],
                     batch_size: int = 128):
        """(len(prompts), list_len) greedy item lists of the current policy (batched, KV cache)."""
        import torch

        from pagellm.backbones import banned_matrix

        self.policy.model.eval()
        out = []
        for start in range(0, len(prompts), batch_size):
            rows = range(start, min(start + batch_size, len(prompts)))
            banned = banned_matrix([banned_rows[i] for i in rows], self.policy.tokens.n_items, self.policy.device)
            with torch.no_grad():
                out.append(decode_items(self.policy, [prompts[i] for i in rows], banned, self.s.list_len))
        return torch.cat(out) if out else torch.zeros((0, self.s.list_len), dtype=torch.long)

    def _score_lists(self, prompts, items, batch_size: int = 128) -> float:
        import torch

        scores = []
        for start in range(0, len(prompts), batch_size):
            part, rows = prompts[start:start + batch_size], items[start:start + batch_size]
            with torch.no_grad():
                if hasattr(self.reward_fn, "sequence_score"):
                    scores.append(self.reward_fn.sequence_score(part, rows).float().cpu())
                else:
                    scores.append(self.reward_fn(part, rows)[0].float().sum(1).cpu())
        return float(torch.cat(scores).mean()) if scores else float("nan")

    def _monitor_row(self, epoch: int, monitor: dict, stats: dict | None) -> dict:
        lists = self.greedy_lists(monitor["prompts"], monitor["banned"])
        if "sft_lists" not in monitor:  # the first call sees the fine-tuned policy
            monitor["sft_lists"] = lists
            monitor["sft_reward"] = self._score_lists(monitor["prompts"], lists)
        stats = stats or {}
        row = {"epoch": epoch, "reward_greedy_sft": monitor["sft_reward"],
               "reward_greedy": self._score_lists(monitor["prompts"], lists),
               "jaccard20_sft": float(jaccard_at(monitor["sft_lists"].cpu(), lists.cpu(), 20).mean())}
        for key in ("approx_kl", "clipfrac", "entropy", "vf_loss", "kl", "score"):
            row[key] = stats.get(key)
        row["kl_coef"] = self.kl.value
        return {k: (round(float(v), 6) if v is not None else None) if k != "epoch" else v for k, v in row.items()}

    def train(self, prompts: Sequence[Sequence[int]], banned_rows: Sequence[Sequence[int]], *,
              monitor: tuple[Sequence[Sequence[int]], Sequence[Sequence[int]]] | None = None) -> EpochLog:
        """`epochs` passes over (prompt, banned items) examples in batches of `batch_size`.

        monitor: (prompts, banned rows) whose greedy lists are tracked per epoch (module
        docstring); the rows land in ``self.curve``."""
        import torch

        from pagellm.backbones import banned_matrix

        log = EpochLog()
        self.curve: list[dict] = []
        watch = {"prompts": list(monitor[0]), "banned": list(monitor[1])} if monitor else None
        if watch:
            self.curve.append(self._monitor_row(0, watch, None))
        for epoch in epoch_bar(self.s.epochs, "pagellm PPO"):
            t0 = time.perf_counter()
            stats = []
            order = torch.randperm(len(prompts), generator=self.cpu_generator).tolist()
            for start in range(0, len(order), self.s.batch_size):
                idx = order[start:start + self.s.batch_size]
                banned = banned_matrix([banned_rows[i] for i in idx], self.policy.tokens.n_items, self.policy.device)
                stats.append(self.step([prompts[i] for i in idx], banned))
            keys = stats[0].keys() if stats else ()
            means = {k: float(np.mean([s[k] for s in stats if k in s])) for k in keys}
            log.add(time.perf_counter() - t0, **means)
            if watch:
                self.curve.append(self._monitor_row(epoch + 1, watch, means))
            logger.info("PPO epoch %d: %s", epoch, self.curve[-1] if watch else log.epochs[-1])
        self.policy.model.eval()
        return log


def _taken(logp_all, items):
    """(B, T, N) log-probs, (B, T) items (-1 = padding) -> (B, T) log-prob of each taken item (0 at padding)."""
    taken = logp_all.gather(-1, items.clamp(min=0)[..., None]).squeeze(-1)
    return taken.masked_fill(items < 0, 0.0)


def _rows(batch: ListBatch, idx) -> ListBatch:
    return ListBatch(batch.input_ids[idx], batch.attention_mask[idx], batch.position_ids[idx], batch.items[idx],
                     batch.list_mask[idx], batch.prompt_len)


def _frozen_copy(backbone: Backbone) -> Backbone:
    model = copy.deepcopy(backbone.model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Backbone(backbone.name, model, backbone.tokenizer, backbone.tokens, backbone.device, backbone.lora)
