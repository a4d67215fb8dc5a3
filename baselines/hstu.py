"""`hstu`: Hierarchical Sequential Transduction Units (Zhai et al., ICML 2024,
"Actions Speak Louder than Words"), the sequential-retrieval encoder.

A user is the sequence of their known items, oldest first (`padded_histories`: right-aligned,
at most ``max_len``), with the timestamp of each interaction. Shapes: B users, N = max_len
positions, d = ``dim``, h = ``heads``, per-head sizes dqk = dv = ``head_dim``.

    x = dropout(E[item] * sqrt(d) + P[position])                       (B, N, d), pads zeroed
    per HSTU layer:
        U, V, Q, K = split(SiLU(W_uvqk LayerNorm(x) + b))                 (B, N, h*dv) / (B, N, h*dqk)
        A = SiLU(Q K^T + rab) / N  * causal_and_valid_mask               (B, h, N, N), NO softmax
        x = x + W_o dropout(LayerNorm(A V) * U)                          (B, N, d)
    user state = L2-normalised output at the last position              (B, d)
    score(item) = <user state, E[item] / ||E[item]||> / temperature

``rab`` is a learned bias per layer, shared by the heads: one weight per relative position
(i - j, one bucket per distance up to N) plus one weight per log-bucket of the time gap
t_i - t_j, bucket = floor(ln(max(gap_seconds, 1)) / 0.301) clipped to ``time_buckets`` - 1
(the bucketisation of the reference code).

Training: next-item prediction at every position of every user's training sequence (the
last ``max_len`` + 1 items), with a sampled softmax over the positive and ``negatives``
items drawn uniformly per position (sampled negatives equal to the positive are masked).
No logQ correction: uniform sampling makes it a constant. Early stopping on the validation
metric, the best state restored.

Deviations from the paper / reference code: the time bias of query i uses its own time t_i
(the reference uses the *next* action's time, the request time, which a top-K scorer does
not know at scoring time); positions are bucketed one per distance (the reference has the
same table); no jagged kernels or M-FALCON (dense padded tensors); the normaliser is the
padded length N as in the reference.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.models import Model, ModelConfig
from bench.training import clone_state, fit_with_early_stopping

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HSTUConfig(ModelConfig):
    dim: int = field(default=50, metadata={"help": "item-embedding and model width d (paper, ML-1M: 50)"})
    layers: int = field(default=2, metadata={"help": "number of HSTU layers (paper, ML-1M: 2)"})
    heads: int = field(default=1, metadata={"help": "attention heads (paper, ML-1M: 1)"})
    head_dim: int = field(default=25, metadata={"help": "per-head size of Q/K and of U/V (reference ML-1M: 25)"})
    max_len: int = field(default=50, metadata={"help": "most recent items kept per user"})
    dropout: float = field(default=0.2, metadata={"help": "input and layer-output dropout (paper: 0.2)"})
    time_buckets: int = field(default=128, metadata={"help": "log-time-gap buckets of the relative bias"})
    negatives: int = field(default=128, metadata={"help": "uniform negatives per position in the sampled softmax"})
    temperature: float = field(default=0.05, metadata={"help": "softmax temperature on cosine scores (paper: 0.05)"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (paper: 1e-3)"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam(W) weight decay"})
    batch_size: int = field(default=128, metadata={"help": "users per training batch"})
    epochs: int = field(default=100, metadata={"help": "maximum training epochs"})
    patience: int = field(default=10, metadata={"help": "stop after this many epochs without a better valid metric"})
    valid_metric: str = field(default="ndcg@20", metadata={"help": "early-stopping metric on the valid split"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})


def _build_network(n_items: int, config: HSTUConfig):
    import torch
    from torch import nn
    from torch.nn import functional as F

    h, dh, n, d = config.heads, config.head_dim, config.max_len, config.dim

    class RelativeBias(nn.Module):
        """rab (B, N, N): position weight of (i - j) + time weight of bucket(t_i - t_j)."""

        def __init__(self) -> None:
            super().__init__()
            self.position = nn.Parameter(torch.zeros(n))
            self.time = nn.Parameter(torch.zeros(config.time_buckets))
            nn.init.trunc_normal_(self.position, std=0.02)
            nn.init.trunc_normal_(self.time, std=0.02)

        def forward(self, times):
            idx = torch.arange(times.shape[1], device=times.device)
            distance = (idx[:, None] - idx[None, :]).clamp(min=0)  # (N, N); j > i is masked anyway
            gap = (times[:, :, None] - times[:, None, :]).abs().clamp(min=1).float()
            bucket = (torch.log(gap) / 0.301).long().clamp(max=config.time_buckets - 1)
            return self.position[distance][None] + self.time[bucket]

    class HSTULayer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.uvqk = nn.Linear(d, 4 * h * dh)
            self.out = nn.Linear(h * dh, d)
            self.rab = RelativeBias()
            self.drop = nn.Dropout(config.dropout)

        def forward(self, x, times, mask):
            """x (B, L, d), times (B, L) int64, mask (B, 1, L, L) float -> (B, L, d); L <= N."""
            b, length = x.shape[:2]
            u, v, q, k = F.silu(self.uvqk(F.layer_norm(x, (d,), eps=1e-6))).chunk(4, dim=-1)
            q, k, v = (t.reshape(b, length, h, dh).transpose(1, 2) for t in (q, k, v))  # (B, h, L, dh)
            # Divided by the full N whatever L is, so trimming padding changes nothing.
            attn = F.silu(q @ k.transpose(-1, -2) + self.rab(times)[:, None]) / n * mask
            av = (attn @ v).transpose(1, 2).reshape(b, length, h * dh)
            return x + self.out(self.drop(F.layer_norm(av, (h * dh,), eps=1e-6) * u))

    class HSTUEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.items = nn.Embedding(n_items + 1, d, padding_idx=0)  # row 0 = padding
            self.positions = nn.Embedding(n, d)
            nn.init.trunc_normal_(self.items.weight, std=0.02)
            nn.init.trunc_normal_(self.positions.weight, std=0.02)
            with torch.no_grad():
                self.items.weight[0].zero_()
            self.layers = nn.ModuleList(HSTULayer() for _ in range(config.layers))
            self.drop = nn.Dropout(config.dropout)

        def forward(self, seqs, times):
            """seqs (B, L) item indices, right-aligned, -1 = padding, L <= N (the last L of the N
            positions: leading all-padding columns may be trimmed); times (B, L)
            -> (B, L, d) L2-normalised states."""
            valid = seqs >= 0
            length = seqs.shape[1]
            x = self.items(seqs + 1) * math.sqrt(d) + self.positions.weight[n - length:][None]
            x = self.drop(x) * valid[..., None]
            causal = torch.ones(length, length, dtype=torch.bool, device=seqs.device).tril()
            mask = (causal[None] & valid[:, None, :]).unsqueeze(1).float()  # (B, 1, L, L)
            for layer in self.layers:
                x = layer(x, times, mask) * valid[..., None]
            return F.normalize(x, dim=-1)

        def item_vectors(self, items=None):
            """L2-normalised embeddings of `items` (any shape of indices), or of all items (n_items, d)."""
            weight = self.items.weight[1:] if items is None else self.items(items + 1)
            return F.normalize(weight, dim=-1)

    return HSTUEncoder()


def _trim(seqs: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop the leading columns that are padding in every row (right-aligned sequences)."""
    filled = (seqs >= 0).any(axis=0)
    start = int(np.argmax(filled)) if filled.any() else seqs.shape[1] - 1
    start = min(start, seqs.shape[1] - 2) if seqs.shape[1] >= 2 else 0  # keep >= 2 columns for (input, target)
    return seqs[:, start:], times[:, start:]


class HSTU(Model):
    Config = HSTUConfig

    # --- setup and one training step (the tests call these directly) ---------------------------

    def _setup(self, split, config: HSTUConfig) -> None:
        import torch

        from bench.data.sequences import KnownInteractions, padded_histories
        from bench.torch_utils import pick_device, seed_torch

        seed_torch(config.seed)
        self.config, self.split, self.n_items = config, split, split.n_items
        self.device = pick_device(config.device)
        self.rng = np.random.default_rng(config.seed)
        self.known = KnownInteractions(split)  # timestamps of known (user, item) pairs
        # Training sequences: the last max_len + 1 training items of every user, oldest first.
        users = np.arange(split.n_users)
        seqs = padded_histories(split, users, split.matrix(("train",)), config.max_len + 1, self.known)
        keep = (seqs >= 0).sum(axis=1) >= 2  # at least one (input, target) pair
        self.train_seqs, self.train_times = seqs[keep], self._times(users[keep], seqs[keep])
        self.net = _build_network(split.n_items, config).to(self.device)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=config.lr, betas=(0.9, 0.98),
                                     weight_decay=config.weight_decay)

    def _times(self, users: np.ndarray, seqs: np.ndarray) -> np.ndarray:
        """(len(users), L) timestamps of the items of `seqs` (0 at padding)."""
        found, times, _ = self.known.lookup(np.asarray(users, dtype=np.int64)[:, None], seqs)
        times = np.where(found & (seqs >= 0), times, 0)
        # Padding gets the first real time, so gaps to padding are small (they are masked anyway).
        first = np.where(seqs >= 0, times, np.iinfo(np.int64).max).min(axis=1, keepdims=True)
        return np.where(seqs >= 0, times, np.where(first == np.iinfo(np.int64).max, 0, first))

    def _train_step(self, seqs: np.ndarray, times: np.ndarray) -> float:
        """One sampled-softmax step on (B, max_len + 1) sequences; returns the mean loss."""
        import torch
        from torch.nn import functional as F

        c = self.config
        self.net.train()
        seqs_t = torch.from_numpy(seqs).to(self.device)
        times_t = torch.from_numpy(times).to(self.device)
        inputs, targets = seqs_t[:, :-1], seqs_t[:, 1:]
        states = self.net(inputs, times_t[:, :-1])  # (B, L, d)
        at = inputs >= 0  # right-aligned: a valid input always has a valid next item
        states, targets = states[at], targets[at]  # (M, d), (M,)
        negatives = torch.randint(0, self.n_items, (len(targets), c.negatives), device=self.device)
        items = self.net.item_vectors()  # (n_items, d), normalised once per step
        pos_logit = (states * items[targets]).sum(-1, keepdim=True)  # (M, 1)
        neg_logits = torch.einsum("md,mkd->mk", states, items[negatives])  # (M, K)
        neg_logits = neg_logits.masked_fill(negatives == targets[:, None], -1e4)
        logits = torch.cat([pos_logit, neg_logits], dim=1) / c.temperature
        loss = F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=self.device))
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def _train_epoch(self) -> float:
        order = self.rng.permutation(len(self.train_seqs))
        bs = self.config.batch_size
        losses = []
        for s in range(0, len(order), bs):
            seqs, times = _trim(self.train_seqs[order[s:s + bs]], self.train_times[order[s:s + bs]])
            losses.append(self._train_step(seqs, times))
        return float(np.mean(losses))

    # --- the model contract ------------------------------------------------------------------

    def fit(self, split, config: HSTUConfig, workdir: Path) -> None:
        t0 = time.perf_counter()
        self._setup(split, config)
        self.train_losses, self.valid_values, stopper = fit_with_early_stopping(
            self, split, epochs=config.epochs, patience=config.patience, metric=config.valid_metric,
            train_epoch=self._train_epoch, snapshot=lambda: clone_state(self.net),
            restore=self.net.load_state_dict, desc="hstu")
        self.best_epoch, self.best_value = stopper.best_epoch, stopper.best
        self.fit_seconds = time.perf_counter() - t0

    def score(self, users: np.ndarray, history) -> np.ndarray:
        """(len(users), n_items): cosine of the last position's state with every item embedding."""
        import torch

        from bench.data.sequences import padded_histories

        self.net.eval()
        seqs = padded_histories(self.split, users, history, self.config.max_len, self.known)
        times = self._times(users, seqs)
        out = np.empty((len(users), self.n_items), dtype=np.float32)
        with torch.no_grad():
            items = self.net.item_vectors()  # (n_items, d)
            for s in range(0, len(users), 512):
                batch_seqs, batch_times = _trim(seqs[s:s + 512], times[s:s + 512])
                states = self.net(torch.from_numpy(batch_seqs).to(self.device),
                                  torch.from_numpy(batch_times).to(self.device))[:, -1]  # (b, d)
                out[s:s + len(states)] = (states @ items.T).float().cpu().numpy()
        return out

    def extra_result(self) -> dict:
        return {
            "epochs_run": len(self.train_losses), "best_epoch": self.best_epoch + 1,
            f"best_valid_{self.config.valid_metric}": self.best_value,
            "final_train_loss": self.train_losses[-1] if self.train_losses else None,
            "n_parameters": int(sum(p.numel() for p in self.net.parameters())),
            "n_train_sequences": int(len(self.train_seqs)),
            "device": str(self.device), "fit_seconds": round(self.fit_seconds, 2),
        }
