"""`md-cvae`: Mutually-Regularized Dual Collaborative VAE (Zhu & Chen, WWW 2022).

Two VAEs, trained alternately (the paper's EM-like "b-step" / "t-step"):

* **User VAE** (Multi-VAE, Liang et al. 2018) over a user's binary item row x_u (n_items,):
  L2-normalise x_u, dropout, ``h = tanh(x_u @ W + b)`` with the *item weight matrix*
  W (n_items, hidden_dims[0]), more tanh layers, then mu/logvar (latent_dim,); the decoder
  mirrors the encoder and ends in n_items logits. Loss per user: multinomial negative
  log-likelihood ``-sum_i x_ui log softmax(logits)_i`` + beta * KL(q(z|x) || N(0, I)), beta
  annealed linearly from 0 to ``anneal_cap``.
* **Item content VAE** over a binary bag of item features f_i (n_features,): categories,
  brand and title words of ``split.items``. ``f_i -> sigmoid MLP -> mu_i, logvar_i``
  (hidden_dims[0],) ``-> sigmoid MLP -> feature logits``, Bernoulli likelihood + KL.

**Mutual regularisation.** Row W_i of the user VAE's first layer is item i's collaborative
embedding; the content latent mu_i lives in the same space (its size is hidden_dims[0]).
Each side is pulled towards the other, the other side held fixed (as the authors' code
alternates them):

    b-step (user VAE):    + lambda_v * mean_i ||W_i - stopgrad(mu_i)||^2
    t-step (content VAE): + lambda_v * mean_i ||mu_i - stopgrad(W_i)||^2

so content shapes the collaborative item weights (helping rare items) and collaborative
data shapes the content latent. The mean runs over items that have at least one feature;
items without features leave their W_i free. When the dataset has no metadata at all
(empty vocabulary) the content VAE is disabled with a warning and the model is a plain
Multi-VAE; ``extra_result()["content_vae"]`` records which one ran.

Simplifications against the paper / authors' code: the content VAE is pretrained end to end
for ``content_pretrain_epochs`` (the authors pretrain it layer-wise first); its decoder is
untied (theirs reuses the transposed encoder weights); the user VAE uses Multi-VAE's
600-200 architecture (their MovieLens setting is 100-50) and is not the "symmetric"
variant with a decoder tied to W; KL annealing is counted in optimiser steps and reaches
the cap after ``anneal_epochs`` epochs' worth of steps (their schedule: 0 -> 0.2 over 80
epochs). Scores are the decoder logits of the posterior mean (no sampling).
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from bench.data.canonical import split_categories
from bench.models import Model, ModelConfig
from bench.training import clone_state, fit_with_early_stopping

logger = logging.getLogger(__name__)

_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class MDCVAEConfig(ModelConfig):
    hidden_dims: tuple[int, ...] = field(default=(600,), metadata={
        "help": "user-VAE encoder hidden sizes (Multi-VAE: 600); the first is the item-embedding size"})
    latent_dim: int = field(default=200, metadata={"help": "user latent size (Multi-VAE: 200)"})
    dropout: float = field(default=0.5, metadata={"help": "dropout on the normalised user row (Multi-VAE: 0.5)"})
    anneal_cap: float = field(default=0.2, metadata={"help": "largest KL weight beta (Multi-VAE, MD-CVAE: 0.2)"})
    anneal_epochs: float = field(default=80.0, metadata={
        "help": "beta rises linearly from 0 to anneal_cap over this many epochs' worth of steps (MD-CVAE: 80)"})
    content_hidden_dims: tuple[int, ...] = field(default=(100,), metadata={
        "help": "content-VAE hidden sizes (MD-CVAE MovieLens: 100); its latent size is hidden_dims[0]"})
    lambda_v: float = field(default=2.0, metadata={
        "help": "weight of the mutual regulariser ||W_i - mu_i||^2 (MD-CVAE: 2 on citeulike-a text, 10 on MovieLens)"})
    lambda_w: float = field(default=2e-4, metadata={
        "help": "L2 weight on the item-facing weight matrices, as 0.5 * sum(w^2) (MD-CVAE: 2e-4)"})
    content_pretrain_epochs: int = field(default=50, metadata={
        "help": "epochs of content-VAE pretraining before the alternating updates"})
    max_title_words: int = field(default=5000, metadata={"help": "title-word vocabulary size (most frequent)"})
    min_word_count: int = field(default=2, metadata={"help": "drop title words in fewer items than this"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of both VAEs"})
    batch_size: int = field(default=256, metadata={"help": "users per b-step batch and items per t-step batch"})
    epochs: int = field(default=100, metadata={"help": "maximum alternating epochs (MD-CVAE: 100)"})
    patience: int = field(default=20, metadata={"help": "stop after this many epochs without a better valid metric"})
    valid_metric: str = field(default="ndcg@20", metadata={"help": "early-stopping metric on the valid split"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})


def item_features(items, max_title_words: int = 5000, min_word_count: int = 2) -> tuple[sp.csr_matrix, list[str]]:
    """(n_items, n_features) binary bag of "cat:", "brand:" and "word:" tokens, and the vocabulary.

    Rows of items without metadata are all zero; the vocabulary is empty when no item has any.
    """
    docs = []
    for cats, brand, title in zip(items["categories"].fillna(""), items["brand"].fillna(""),
                                  items["title"].fillna("")):
        tokens = {f"cat:{c.lower()}" for c in split_categories(cats)}
        if str(brand).strip():
            tokens.add(f"brand:{str(brand).strip().lower()}")
        docs.append((tokens, {f"word:{w}" for w in _WORD.findall(str(title).lower()) if len(w) > 1}))
    df = Counter(w for _, words in docs for w in words)
    words = sorted((w for w, c in df.items() if c >= min_word_count), key=lambda w: (-df[w], w))[:max_title_words]
    vocab = sorted({t for tokens, _ in docs for t in tokens}) + sorted(words)
    index = {t: j for j, t in enumerate(vocab)}
    rows, cols = [], []
    for i, (tokens, title_words) in enumerate(docs):
        for t in tokens | (title_words & index.keys()):
            rows.append(i)
            cols.append(index[t])
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(docs), len(vocab)))
    return matrix, vocab


def _mlp(torch, sizes: list[int], activation):
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), activation()]
    return torch.nn.Sequential(*layers)


def _build_networks(n_items: int, n_features: int, config: MDCVAEConfig):
    import torch
    from torch import nn

    class UserVAE(nn.Module):
        """x (B, n_items) -> logits (B, n_items), mu, logvar (B, latent_dim)."""

        def __init__(self) -> None:
            super().__init__()
            h0 = config.hidden_dims[0]
            # The item weight matrix W (n_items, h0): W_i is item i's collaborative embedding.
            self.item_weight = nn.Parameter(torch.empty(n_items, h0))
            nn.init.xavier_uniform_(self.item_weight)
            self.item_bias = nn.Parameter(torch.zeros(h0))
            self.encoder = _mlp(torch, list(config.hidden_dims), nn.Tanh)
            self.to_stats = nn.Linear(config.hidden_dims[-1], 2 * config.latent_dim)
            self.decoder = _mlp(torch, [config.latent_dim, *config.hidden_dims[::-1]], nn.Tanh)
            self.output = nn.Linear(h0, n_items)
            self.drop = nn.Dropout(config.dropout)

        def forward(self, x, sample: bool = True):
            x = self.drop(nn.functional.normalize(x, dim=1))
            h = self.encoder(torch.tanh(x @ self.item_weight + self.item_bias))
            mu, logvar = self.to_stats(h).chunk(2, dim=1)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample and self.training else mu
            return self.output(self.decoder(z)), mu, logvar

    class ContentVAE(nn.Module):
        """f (B, n_features) -> feature logits (B, n_features), mu, logvar (B, hidden_dims[0])."""

        def __init__(self) -> None:
            super().__init__()
            dims = [n_features, *config.content_hidden_dims]
            self.encoder = _mlp(torch, dims, nn.Sigmoid)
            self.to_stats = nn.Linear(dims[-1], 2 * config.hidden_dims[0])
            self.decoder = _mlp(torch, [config.hidden_dims[0], *dims[::-1][:-1]], nn.Sigmoid)
            self.output = nn.Linear(dims[1] if len(dims) > 1 else config.hidden_dims[0], n_features)

        def forward(self, f):
            mu, logvar = self.to_stats(self.encoder(f)).chunk(2, dim=1)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
            return self.output(self.decoder(z)), mu, logvar

    return UserVAE(), (ContentVAE() if n_features else None)


def _kl(mu, logvar):
    """Mean over rows of KL(N(mu, exp(logvar)) || N(0, I))."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()


class MDCVAE(Model):
    Config = MDCVAEConfig

    # --- setup and one step of each side (the tests call these directly) ---------------------

    def _setup(self, split, config: MDCVAEConfig) -> None:
        import torch

        from bench.torch_utils import pick_device, seed_torch

        seed_torch(config.seed)
        self.config = config
        self.device = pick_device(config.device)
        self.rng = np.random.default_rng(config.seed)
        self.train_matrix = split.matrix(("train",))
        self.n_items = split.n_items
        features, vocab = item_features(split.items, config.max_title_words, config.min_word_count)
        self.n_features = len(vocab)
        self.content_disabled_reason = None
        if not vocab:
            self.content_disabled_reason = (f"no item metadata in {split.dataset}: "
                                            "content VAE disabled (plain Multi-VAE)")
            logger.warning("md-cvae: %s", self.content_disabled_reason)
        self.user_vae, self.content_vae = _build_networks(split.n_items, self.n_features, config)
        self.user_vae.to(self.device)
        self.user_opt = torch.optim.Adam(self.user_vae.parameters(), lr=config.lr)
        if self.content_vae is not None:
            self.content_vae.to(self.device)
            self.content_opt = torch.optim.Adam(self.content_vae.parameters(), lr=config.lr)
            self.features = features  # sparse, on the CPU: densified a batch at a time
            self.featured = np.flatnonzero(features.getnnz(axis=1) > 0)  # items with >= 1 feature
            self.featured_t = torch.from_numpy(self.featured).to(self.device)
        self.steps = 0
        self.pretraining = False
        batches_per_epoch = max(1, -(-split.n_users // config.batch_size))
        self.anneal_steps = max(1.0, config.anneal_epochs * batches_per_epoch)

    @property
    def beta(self) -> float:
        return min(self.config.anneal_cap, self.config.anneal_cap * self.steps / self.anneal_steps)

    def _dense_features(self, items: np.ndarray):
        import torch

        return torch.from_numpy(self.features[items].toarray()).to(self.device)

    def _content_targets(self):
        """(n_featured, hidden_dims[0]) posterior means of the content VAE, without gradient."""
        import torch

        self.content_vae.eval()
        with torch.no_grad():
            mu = torch.cat([self.content_vae(self._dense_features(self.featured[s:s + 4096]))[1]
                            for s in range(0, len(self.featured), 4096)])
        self.content_vae.train()
        return mu

    def _user_step(self, rows: np.ndarray, targets=None) -> float:
        """One b-step on users `rows`; `targets` = `_content_targets()` (None: no content)."""
        import torch

        c = self.config
        self.user_vae.train()
        x = torch.from_numpy(self.train_matrix[rows].toarray()).to(self.device)
        logits, mu, logvar = self.user_vae(x)
        nll = -(torch.log_softmax(logits, dim=1) * x).sum(dim=1).mean()
        loss = nll + self.beta * _kl(mu, logvar)
        w = self.user_vae.item_weight
        loss = loss + c.lambda_w * 0.5 * (w.pow(2).sum() + self.user_vae.output.weight.pow(2).sum())
        if targets is not None:
            loss = loss + c.lambda_v * (w[self.featured_t] - targets).pow(2).sum(dim=1).mean()
        self.user_opt.zero_grad()
        loss.backward()
        self.user_opt.step()
        self.steps += 1
        return float(loss.detach())

    def _content_step(self, items: np.ndarray) -> float:
        """One t-step on `items` (item indices, each with at least one feature)."""
        import torch

        c = self.config
        f = self._dense_features(items)
        logits, mu, logvar = self.content_vae(f)
        recon = torch.nn.functional.binary_cross_entropy_with_logits(logits, f, reduction="none").sum(dim=1).mean()
        loss = recon + _kl(mu, logvar)
        loss = loss + c.lambda_w * 0.5 * sum(m.weight.pow(2).sum() for m in self.content_vae.modules()
                                             if isinstance(m, torch.nn.Linear))
        if not self.pretraining:
            w = self.user_vae.item_weight[torch.from_numpy(items).to(self.device)].detach()
            loss = loss + c.lambda_v * (mu - w).pow(2).sum(dim=1).mean()
        self.content_opt.zero_grad()
        loss.backward()
        self.content_opt.step()
        return float(loss.detach())

    def _content_epoch(self) -> float:
        self.content_vae.train()
        order = self.rng.permutation(self.featured)
        losses = [self._content_step(order[s:s + self.config.batch_size])
                  for s in range(0, len(order), self.config.batch_size)]
        return float(np.mean(losses)) if losses else float("nan")

    def _user_epoch(self) -> float:
        targets = self._content_targets() if self.content_vae is not None else None
        users = self.rng.permutation(self.train_matrix.shape[0])
        users = users[self.train_matrix.getnnz(axis=1)[users] > 0]
        losses = [self._user_step(users[s:s + self.config.batch_size], targets)
                  for s in range(0, len(users), self.config.batch_size)]
        return float(np.mean(losses))

    # --- the model contract ------------------------------------------------------------------

    def fit(self, split, config: MDCVAEConfig, workdir: Path) -> None:
        t0 = time.perf_counter()
        self._setup(split, config)
        if self.content_vae is not None:
            self.pretraining = True  # reconstruction + KL only: W is still random
            for _ in range(config.content_pretrain_epochs):
                self._content_epoch()
            self.pretraining = False
        first = [True]

        def epoch() -> float:
            # Alternating optimisation: a t-step (content VAE) between consecutive b-steps (user VAE).
            if not first[0] and self.content_vae is not None:
                self._content_epoch()
            first[0] = False
            return self._user_epoch()

        self.train_losses, self.valid_values, stopper = fit_with_early_stopping(
            self, split, epochs=config.epochs, patience=config.patience, metric=config.valid_metric,
            train_epoch=epoch, snapshot=self._state, restore=self._load_state, desc="md-cvae")
        self.best_epoch, self.best_value = stopper.best_epoch, stopper.best
        self.fit_seconds = time.perf_counter() - t0

    def _state(self) -> dict:
        nets = {"user": self.user_vae, **({"content": self.content_vae} if self.content_vae is not None else {})}
        return {name: clone_state(net) for name, net in nets.items()}

    def _load_state(self, state: dict) -> None:
        self.user_vae.load_state_dict(state["user"])
        if self.content_vae is not None:
            self.content_vae.load_state_dict(state["content"])

    def score(self, users: np.ndarray, history) -> np.ndarray:
        """(len(users), n_items) decoder logits of the posterior mean of each history row."""
        import torch

        self.user_vae.eval()
        out = np.empty((len(users), self.n_items), dtype=np.float32)
        with torch.no_grad():
            for s in range(0, len(users), 1024):
                x = torch.from_numpy(history[s:s + 1024].toarray().astype(np.float32)).to(self.device)
                out[s:s + len(x)] = self.user_vae(x, sample=False)[0].float().cpu().numpy()
        return out

    def extra_result(self) -> dict:
        params = sum(p.numel() for p in self.user_vae.parameters())
        if self.content_vae is not None:
            params += sum(p.numel() for p in self.content_vae.parameters())
        return {
            "epochs_run": len(self.train_losses), "best_epoch": self.best_epoch + 1,
            f"best_valid_{self.config.valid_metric}": self.best_value,
            "final_train_loss": self.train_losses[-1] if self.train_losses else None,
            "final_beta": self.beta, "n_parameters": int(params), "n_content_features": self.n_features,
            "content_vae": "disabled" if self.content_vae is None else "enabled",
            "warnings": [self.content_disabled_reason] if self.content_disabled_reason else [],
            "device": str(self.device), "fit_seconds": round(self.fit_seconds, 2),
        }
