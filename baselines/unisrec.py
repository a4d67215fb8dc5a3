"""`unisrec` / `unisrec-scratch`: Universal Sequence Representation (Hou et al., KDD 2022).

`unisrec` is the paper's method: the MoE adaptor and the transformer are **pre-trained** on
several source domains, then **fine-tuned** on the target. `unisrec-scratch` skips the
pre-training and trains everything on the target alone, in one stage (what `unisrec` was before
pre-training was added; the comparison of the two is in docs/unisrec.md).

Each item's text ("<title>. <categories>. <brand>.", the fields and cleaning of the authors'
``process_amazon.py``) is encoded once by a frozen sentence encoder into t_i (d,) (default the
offline all-MiniLM-L6-v2, d = 384; the paper used BERT-base [CLS], d = 768). The embeddings are
cached in ``workdir`` as ``unisrec_text_<hash>.npy``, the hash covering the encoder name and
every text, so a rerun does not re-encode.

**MoE adaptor** (parametric whitening experts): with K experts,

    v_i = sum_k g_ik * ((t_i - b_k) W_k),   g_i = softmax(t_i W_gate + noise),  W_k (d, hidden)

where during training the noise is N(0, 1) * (softplus(t_i W_noise) + 0.01) and at evaluation
there is none (the authors' ``MoEAdaptorLayer``; dropout on t_i inside each expert). With
``item_id_embedding`` an ID embedding e_i is added, v_i + e_i (the paper's transductive setting).

**Sequence encoder** (SASRec as in RecBole): the last ``max_len`` items of a history, oldest
first and right-aligned (B, L), are embedded as v + learned position (positions count back
from the most recent item), LayerNorm + dropout, then ``n_layers`` post-LN transformer
blocks with causal self-attention (GELU feed-forward). The user representation is the output at
the last position, s_u (hidden,). Scores are cos(s_u, v_i) / temperature over all items, and
the fine-tuning loss is the full-softmax cross-entropy of the next item (each prefix of a
training sequence predicts the item after it, as the authors' pre-augmented files do).

**Pre-training** (`unisrec` only; a stage of `bench.stages`, see `pretrain`): the sources are
``pretrain_datasets``, by default the preset's other datasets (`UniSRec.job_config`, called by
the runner per job, writes them into the job's config, so they are in its hash). The target is
always left out, and of each source only the TRAIN split is read (with the target's split
settings), so no valid or test interaction of any dataset of a grid reaches pre-training (the
authors, too, pre-train on ``<domain>.train.inter``). Sources without any item text are left
out with a warning. The sources' prefixes are merged into one catalogue (no item IDs) and
shuffled together, so batches mix domains; the loss is the sequence-item + ``pretrain_lambda``
x sequence-sequence in-batch contrastive loss, with the authors' item-drop / word-drop
augmentations (`_pretrain_loss`), for ``pretrain_epochs`` epochs without validation (the
authors' 300). The stage lives in ``<root>/work/unisrec-pretrain/pretrain-<key hash>``
(`pretrain_root`), keyed by the sources and their split hashes, the encoder, the architecture,
the pre-training settings and the seed: every job with the same key (other presets, targets
whose sources coincide, another fine-tuning setting) reuses it, and concurrent jobs compute it
once (a lock). Each seed pre-trains its own model, so seeds replicate the whole method.

**Fine-tuning** starts from the pre-trained adaptor, position embeddings, LayerNorm and
transformer (the item ID embeddings, with ``item_id_embedding``, start fresh) and, with
``freeze_encoder`` (the authors' ``finetune.py`` default, ``fix_enc``), keeps the position
embeddings and the transformer fixed while the adaptor, LayerNorm and ID embeddings train. When
there is nothing to pre-train on (no source with text) `unisrec` trains from scratch and says
so in ``extra_result()["warning"]``; a target without item text has no adaptor to transfer and
is not pre-trained either (``pretraining.skipped``).

Deviations from the paper, deliberately:

* **Transductive by default** (``item_id_embedding: true``), the authors' default
  (``props/UniSRec.yaml``: ``train_stage: transductive_ft``). Without pre-training the ID
  embedding also helps: on ``synthetic`` with the default dims, test recall@20 0.713 with it and
  0.666 text-only (CPU, seed 0). Set it false for the text-only (inductive) variant.
* **Encoder**: all-MiniLM-L6-v2 mean pooling (384-d) instead of BERT-base [CLS] (768-d), so it
  runs offline; any local sentence-transformers model can be given in ``encoder``.
* Per training step the adaptor is applied once to the whole catalogue and the sequence inputs
  are gathered from that table (the authors call it separately for inputs and targets, with
  independent dropout / gate-noise draws). Cheaper, same model at evaluation.
* Items without any text: when *no* item has a title, brand or category (e.g.
  ``beauty-2018-sample``) the text branch is dropped with a warning and the model is SASRec
  with cosine / temperature scores over ID embeddings; ``extra_result()["warning"]`` says so.
  When only some items lack text they get the encoding of the empty string (the ID embedding,
  if on, still tells them apart); their count is recorded.
* Defaults are the authors' (hidden 300, 2 layers, 2 heads, inner 256, dropout 0.5,
  adaptor dropout 0.2, 8 experts, temperature 0.07, Adam 1e-3, stop after 10 epochs without
  a better valid metric) except ``batch_size`` 256 (theirs 2048): on small catalogues 2048
  leaves one or a few optimiser steps per epoch (measured on ``synthetic``, small dims: 2x the
  time, and test recall@20 0.669 instead of 0.708). On a GPU and a large category, 2048 is the
  faithful choice (``--set unisrec.batch_size=2048``). Early stopping reads valid ndcg@20
  through ``bench.scoring.validate`` (theirs: NDCG@10), and the best state is restored.
* Pre-training: the sources are whatever datasets the preset has (the paper: five large 2018
  categories, Food, Home, CDs, Kindle, Movies); ``pretrain_batch_size`` 8192 and 300 epochs
  as the authors, fewer in the `cpu` / `smoke` settings. In the in-batch losses, other prefixes
  with the same next item are removed from the negatives (the authors' code sets their logit
  to 0, so each still adds e^0 to the denominator; the paper says they are removed). Item
  drop keeps the most recent item of a sequence (the authors keep the first): both only make
  sure no sequence becomes empty. The word-dropped texts are drawn once per stage (the
  authors' ``feat2CLS`` file, drawn once per dataset).
* Batches are bucketed by prefix length and all-padding columns trimmed (``bucket_by_length``):
  the same model and loss, batches of similar-length prefixes instead of uniformly mixed ones.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.data.canonical import split_categories
from bench.errors import ConfigError
from bench.io import atomic_path, hash_json
from bench.models import Model, ModelConfig
from bench.text import DEFAULT_ENCODER, encode_texts
from bench.training import clone_state, fit_with_early_stopping

logger = logging.getLogger(__name__)

NO_TEXT_WARNING = "no item text: UniSRec fell back to ID embeddings"


@dataclass(frozen=True)
class UniSRecConfig(ModelConfig):
    encoder: str = field(default="", metadata={
        "help": "sentence encoder for item text: '' = the offline all-MiniLM-L6-v2, else a local "
                "sentence-transformers / HF model path (paper: BERT-base [CLS])"})
    item_id_embedding: bool = field(default=True, metadata={
        "help": "add a learned item ID embedding to the text representation (the paper's transductive "
                "setting, the authors' default); false = text only (inductive)"})
    max_len: int = field(default=50, metadata={
        "help": "most recent items of a history fed to the transformer (paper: 50)"})
    hidden_size: int = field(default=300, metadata={"help": "transformer / adaptor output size (paper: 300)"})
    inner_size: int = field(default=256, metadata={"help": "transformer feed-forward size (paper: 256)"})
    n_layers: int = field(default=2, metadata={"help": "transformer blocks (paper: 2)"})
    n_heads: int = field(default=2, metadata={"help": "attention heads; must divide hidden_size (paper: 2)"})
    n_experts: int = field(default=8, metadata={"help": "whitening experts in the MoE adaptor (paper: 8)"})
    hidden_dropout: float = field(default=0.5, metadata={
        "help": "dropout on embeddings and block outputs (paper: 0.5)"})
    attn_dropout: float = field(default=0.5, metadata={"help": "dropout on attention weights (paper: 0.5)"})
    adaptor_dropout: float = field(default=0.2, metadata={
        "help": "dropout on the text embedding in each expert (paper: 0.2)"})
    temperature: float = field(default=0.07, metadata={
        "help": "softmax temperature of the cosine scores (paper: 0.07)"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (paper: 1e-3)"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay (paper: 0)"})
    batch_size: int = field(default=256, metadata={"help": "training prefixes per step (paper: 2048; see module doc)"})
    epochs: int = field(default=300, metadata={"help": "maximum epochs (RecBole default: 300)"})
    patience: int = field(default=10, metadata={
        "help": "stop after this many epochs without a better valid metric (paper: 10)"})
    bucket_by_length: bool = field(default=True, metadata={
        "help": "batch prefixes of similar length together (padding is then trimmed: same model, much "
                "faster on short histories); false = plain shuffled batches"})
    valid_metric: str = field(default="ndcg@20", metadata={"help": "early-stopping metric on the valid split"})
    # --- multi-domain pre-training (`unisrec` only; `unisrec-scratch` ignores these)
    pretrain_datasets: tuple[str, ...] = field(default=(), metadata={
        "help": "source domains of pre-training (their TRAIN splits only, same split settings as the target); "
                "empty = the preset's other datasets, filled in per job by the runner; the target is always "
                "left out (paper: Food, Home, CDs, Kindle, Movies)"})
    pretrain_epochs: int = field(default=300, metadata={
        "help": "pre-training epochs, no early stopping (authors' pretrain.yaml: 300)"})
    pretrain_batch_size: int = field(default=8192, metadata={
        "help": "pre-training prefixes per step, also the in-batch negatives (authors' pretrain.yaml: 8192)"})
    pretrain_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of pre-training (authors: 1e-3)"})
    pretrain_lambda: float = field(default=1e-3, metadata={
        "help": "weight of the sequence-sequence contrastive loss next to the sequence-item one (paper: 1e-3)"})
    item_drop_ratio: float = field(default=0.2, metadata={
        "help": "augmentation: share of a sequence's items dropped (item drop) or given their word-dropped "
                "text (word drop) (authors: 0.2)"})
    item_drop_coefficient: float = field(default=0.9, metadata={
        "help": "augmentation: probability that a batch uses item drop rather than word drop (authors: 0.9)"})
    word_drop_ratio: float = field(default=0.15, metadata={
        "help": "word drop: share of the words of an item text dropped before encoding it (authors: 0.15)"})
    freeze_encoder: bool = field(default=True, metadata={
        "help": "fine-tuning after pre-training: keep the pre-trained transformer and position embeddings "
                "fixed and train the adaptor (+ ID embeddings) (authors' finetune.py, fix_enc: true)"})
    score_batch_size: int = field(default=512, metadata={"help": "users per forward pass when scoring"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})


# --- item text ---------------------------------------------------------------------------------

def _clean(text: str) -> str:
    """The authors' clean_text on top of the data's one cleaner (`canonical.clean_text`: markup,
    entities, whitespace): drop quotes, end with exactly one '.'."""
    from bench.data.canonical import clean_text

    text = clean_text(text).replace('"', "").strip()
    return text.rstrip(".") + "." if text else ""


def item_texts(items) -> list[str]:
    """One text per item, "<title>. <category path>. <brand>." (empty fields left out; "" if none)."""
    out = []
    for title, cats, brand in zip(items["title"].fillna(""), items["categories"].fillna(""),
                                  items["brand"].fillna("")):
        parts = [_clean(title), _clean(" ".join(split_categories(cats))), _clean(brand)]
        out.append(" ".join(p for p in parts if p))
    return out


def cached_text_embeddings(texts: list[str], encoder: str, workdir: Path | None) -> tuple[np.ndarray, bool]:
    """(len(texts), d) float32 embeddings, read from ``workdir`` when this (encoder, texts) was
    encoded before; returns (embeddings, whether the cache was hit)."""
    name = encoder or DEFAULT_ENCODER
    path = None if workdir is None else Path(workdir) / f"unisrec_text_{hash_json([name, texts])}.npy"
    if path is not None and path.exists():
        emb = np.load(path)
        if emb.shape[0] == len(texts):
            return emb.astype(np.float32, copy=False), True
        logger.warning("ignoring %s: %d rows for %d texts", path, emb.shape[0], len(texts))
    emb = encode_texts(texts, encoder or None)
    if path is not None:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, emb)
    return emb, False


# --- the network ---------------------------------------------------------------------------------

def _build_network(n_items: int, text_dim: int | None, config: UniSRecConfig):
    """The UniSRec module; ``text_dim`` None builds the ID-embedding fallback (no adaptor)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class MoEAdaptor(nn.Module):
        """t (N, d) -> (N, hidden): softmax-gated sum of K parametric whitening experts (t - b_k) W_k."""

        def __init__(self, d: int, hidden: int, k: int, dropout: float) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(k, d))                    # b_k
            self.weight = nn.Parameter(torch.randn(k, d, hidden) * 0.02)  # W_k
            self.w_gate = nn.Parameter(torch.zeros(d, k))
            self.w_noise = nn.Parameter(torch.zeros(d, k))
            self.dropout = dropout

        def forward(self, t):
            logits = t @ self.w_gate
            if self.training:  # noisy gating while training only, as the authors' noisy_top_k_gating
                logits = logits + torch.randn_like(logits) * (F.softplus(t @ self.w_noise) + 1e-2)
            gates = torch.softmax(logits, dim=-1)                                    # (N, K)
            # (drop_k(t) - b_k) W_k = drop_k(t) W_k - b_k W_k: the (K, N, d) copy is made only
            # when each expert needs its own dropout mask.
            if self.training and self.dropout > 0:
                x = F.dropout(t.unsqueeze(0).expand(self.weight.shape[0], -1, -1), self.dropout)  # (K, N, d)
                experts = torch.bmm(x, self.weight)                                   # (K, N, hidden)
            else:
                experts = torch.einsum("nd,kdh->knh", t, self.weight)
            experts = experts - torch.bmm(self.bias.unsqueeze(1), self.weight)       # - b_k W_k
            return torch.einsum("nk,knh->nh", gates, experts)

    class Block(nn.Module):
        """Post-LN transformer block as RecBole's TransformerLayer: x (B, L, H), allowed (B, 1, L, L)."""

        def __init__(self) -> None:
            super().__init__()
            h = config.hidden_size
            self.qkv, self.out = nn.Linear(h, 3 * h), nn.Linear(h, h)
            self.ff1, self.ff2 = nn.Linear(h, config.inner_size), nn.Linear(config.inner_size, h)
            self.ln1, self.ln2 = nn.LayerNorm(h, eps=1e-12), nn.LayerNorm(h, eps=1e-12)
            self.drop = nn.Dropout(config.hidden_dropout)

        def forward(self, x, allowed):
            b, n, h = x.shape
            q, k, v = self.qkv(x).view(b, n, 3, config.n_heads, h // config.n_heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                               dropout_p=config.attn_dropout if self.training else 0.0)
            x = self.ln1(x + self.drop(self.out(a.transpose(1, 2).reshape(b, n, h))))
            return self.ln2(x + self.drop(self.ff2(F.gelu(self.ff1(x)))))

    class UniSRecNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            h = config.hidden_size
            self.adaptor = MoEAdaptor(text_dim, h, config.n_experts, config.adaptor_dropout) if text_dim else None
            self.item_embedding = nn.Embedding(n_items, h) if (text_dim is None or config.item_id_embedding) else None
            self.position = nn.Embedding(config.max_len, h)
            self.ln = nn.LayerNorm(h, eps=1e-12)
            self.drop = nn.Dropout(config.hidden_dropout)
            self.blocks = nn.ModuleList(Block() for _ in range(config.n_layers))
            for module in [self.position, self.ln, *self.blocks, self.item_embedding]:
                if module is not None:
                    module.apply(_init_recbole)
            # The frozen text embeddings travel with the module (.to(device)) but are not trained.
            self.register_buffer("text", torch.zeros(n_items, text_dim or 0), persistent=False)

        def items(self):
            """(n_items, hidden) item representations v_i (+ e_i)."""
            v = self.adaptor(self.text) if self.adaptor is not None else 0.0
            return v + self.item_embedding.weight if self.item_embedding is not None else v

        def encode(self, seq, items):
            """seq (B, L) item indices, right-aligned, -1 = padding -> (B, hidden) last-position output."""
            # Columns that are padding in every row change nothing (pads are never attended to by
            # real positions): drop them, keeping each slot's position embedding. Exact, and most
            # prefixes are short, so this is most of the training speed.
            used = torch.nonzero((seq >= 0).any(dim=0))
            first = int(used[0]) if len(used) else seq.shape[1] - 1
            seq = seq[:, first:]
            valid = seq >= 0
            x = items[seq.clamp(min=0)] * valid.unsqueeze(-1)
            x = self.drop(self.ln(x + self.position.weight[first:].unsqueeze(0)))
            n = seq.shape[1]
            causal = torch.ones(n, n, dtype=torch.bool, device=seq.device).tril()
            # Queries see earlier real items; each position also sees itself, so an all-padding
            # row (a user without history) gives finite output instead of NaN.
            allowed = (causal & valid.unsqueeze(1)) | torch.eye(n, dtype=torch.bool, device=seq.device)
            allowed = allowed.unsqueeze(1)
            for block in self.blocks:
                x = block(x, allowed)
            return x[:, -1]

        def logits(self, seq):
            """(B, n_items) cos(s_u, v_i) / temperature."""
            items = self.items()
            s = F.normalize(self.encode(seq, items), dim=-1)
            return s @ F.normalize(items, dim=-1).T / config.temperature

    def _init_recbole(module) -> None:
        # RecBole's SASRec init: N(0, 0.02) weights, zero biases, unit LayerNorm.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, 0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
        if isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    return UniSRecNet()


# --- training data -------------------------------------------------------------------------------

class _Prefixes:
    """Every (prefix -> next item) pair of the training sequences, built batch by batch.

    Train rows are ordered by (user, time, item) like `padded_histories`, so the sequences
    match what scoring sees; example j predicts row targets_at[j] from the (at most max_len)
    rows of the same user before it.
    """

    def __init__(self, train, max_len: int) -> None:
        users, items, times = (train[c].to_numpy(np.int64) for c in ("user", "item", "timestamp"))
        order = np.lexsort((items, times, users))
        users, self.items = users[order], items[order]
        first = np.r_[True, users[1:] != users[:-1]]
        self.starts = np.maximum.accumulate(np.where(first, np.arange(len(users)), 0))
        self.targets_at = np.flatnonzero(~first)  # rows that have a predecessor in their user
        self.lengths = np.minimum(self.targets_at - self.starts[self.targets_at], max_len)
        self.offsets = np.arange(max_len) - (max_len - 1)

    def __len__(self) -> int:
        return len(self.targets_at)

    def batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, max_len) right-aligned prefixes (-1 = padding) and (B,) next items."""
        at = self.targets_at[rows]
        idx = (at - 1)[:, None] + self.offsets[None, :]
        seq = np.where(idx >= self.starts[at][:, None], self.items[np.maximum(idx, 0)], -1)
        return seq, self.items[at]


def _epoch_batches(prefixes: _Prefixes, bs: int, bucket: bool, rng: np.random.Generator) -> list[np.ndarray]:
    """A shuffled epoch of example indices cut into batches. With `bucket`, each run of 32
    batches is sorted by prefix length first, so a batch pads to similar lengths."""
    order = rng.permutation(len(prefixes))
    if bucket:
        chunks = [order[s:s + 32 * bs] for s in range(0, len(order), 32 * bs)]
        order = np.concatenate([c[np.argsort(prefixes.lengths[c], kind="stable")] for c in chunks])
    batches = [order[s:s + bs] for s in range(0, len(order), bs)]
    return [batches[i] for i in rng.permutation(len(batches))]


# --- multi-domain pre-training ------------------------------------------------------------------

PRETRAIN_STAGE_VERSION = 1  # bump when the pre-training code changes: every pre-trained stage is recomputed
# Settings the pre-trained weights depend on (with the sources, their split hashes and the seed).
_PRETRAIN_KEYS = ("encoder", "max_len", "hidden_size", "inner_size", "n_layers", "n_heads", "n_experts",
                  "hidden_dropout", "attn_dropout", "adaptor_dropout", "temperature", "weight_decay",
                  "bucket_by_length", "pretrain_epochs", "pretrain_batch_size", "pretrain_lr", "pretrain_lambda",
                  "item_drop_ratio", "item_drop_coefficient", "word_drop_ratio")
NO_SOURCE_WARNING = "no source dataset with item text: UniSRec was trained without pre-training"


def pretrain_root(workdir: Path) -> Path:
    """Where pre-trained stages and the sources' text embeddings live: one folder per workspace,
    ``<root>/work/unisrec-pretrain``, shared by every job (any preset, target and variant) whose
    stage key matches; ``<workdir>/unisrec-pretrain`` for a workdir outside the runner's layout
    (``<root>/work/<preset>/<dataset>/<split>/<model>/seed<k>``)."""
    workdir = Path(workdir)
    parents = workdir.parents
    if len(parents) >= 5 and parents[4].name == "work" and workdir.name.startswith("seed"):
        return parents[4] / "unisrec-pretrain"
    return workdir / "unisrec-pretrain"


def _workspace_of(split):
    """The workspace a split was loaded from (``<root>/data/splits/<dataset>/<split>``)."""
    from bench.paths import Workspace

    directory = Path(split.directory).resolve()
    if len(directory.parents) < 4 or directory.parents[1].name != "splits" or directory.parents[2].name != "data":
        raise ConfigError(f"unisrec: the split at {directory} is not inside a workspace "
                          "(<root>/data/splits/<dataset>/<split>), so its pre-training datasets cannot be found; "
                          "run through `bench run`, or use unisrec-scratch")
    return Workspace(directory.parents[3])


def load_sources(split, names) -> tuple[list, list[str]]:
    """(source splits with item text, names skipped for having none) of pre-training for `split`'s
    dataset: each name's split with the target's split settings, built when missing (under a lock,
    since parallel jobs may want the same one). The target itself is never a source."""
    from bench.data.datasets import ensure_split
    from bench.data.splits import SplitSpec
    from bench.errors import BenchError
    from bench.locks import locked

    ws = _workspace_of(split)
    spec = SplitSpec(**split.spec)
    sources, skipped = [], []
    for name in dict.fromkeys(names):
        if name == split.dataset:
            continue
        try:
            with locked(ws.split(name, spec.name).parent / f".{spec.name}.lock"):
                source = ensure_split(name, ws, spec)
        except BenchError as exc:
            raise ConfigError(f"unisrec pre-trains on {name!r}, which is not available: {exc} -- or choose other "
                              "sources with --set unisrec.pretrain_datasets=[a,b], or run unisrec-scratch") from None
        if any(item_texts(source.items)):
            sources.append(source)
        else:
            logger.warning("unisrec: pre-training source %s has no item text; left out", name)
            skipped.append(name)
    return sources, skipped


def _word_drop(texts: list[str], ratio: float, rng: np.random.Generator) -> list[str]:
    """Each text with each word dropped with probability `ratio` (the authors' word drop, applied
    once per item before encoding: their ``feat2CLS`` file)."""
    out = []
    for text in texts:
        words = text.split(" ")
        out.append(" ".join(w for w, r in zip(words, rng.random(len(words))) if r > ratio))
    return out


def _item_drop(seq: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """(B, L) right-aligned sequences with each item dropped with probability `ratio`, the rest
    right-aligned again in order. The most recent item always stays (the authors keep the first),
    so no sequence becomes empty."""
    real = seq >= 0
    keep = real & (rng.random(seq.shape) >= ratio)
    keep[:, -1] |= real[:, -1]
    order = np.argsort(keep, axis=1, kind="stable")  # dropped and padding first, kept items after, in order
    return np.where(np.take_along_axis(keep, order, axis=1), np.take_along_axis(seq, order, axis=1), -1)


def _pretrain_loss(net, seq: np.ndarray, target: np.ndarray, text, text_aug, config: UniSRecConfig,
                   rng: np.random.Generator):
    """L = L_seq-item + lambda * L_seq-seq on one batch: prefixes (B, L) and next items (B,) as
    indices into the merged catalogue of the sources, whose text embeddings are `text`
    (N, d) and, word-dropped, `text_aug` (N, d).

    Both are in-batch contrastive losses over cosine / temperature: a prefix's positive is its
    next item's v (sequence-item) or its augmented copy's output (sequence-sequence), the
    negatives are those of the other prefixes of the batch (which mixes the domains); other
    prefixes with the same next item are left out of the negatives (the authors set their logit to
    0, so each still adds e^0 to the denominator; here they are removed, as the paper says).
    Each batch is augmented by item drop with probability `item_drop_coefficient`, else by word
    drop: `item_drop_ratio` of the positions take their item's word-dropped text embedding.
    The adaptor runs once per distinct item of the batch.
    """
    import torch
    from torch.nn import functional as F

    if rng.random() < config.item_drop_coefficient:
        aug, word = _item_drop(seq, config.item_drop_ratio, rng), None
    else:
        aug, word = seq, (seq >= 0) & (rng.random(seq.shape) < config.item_drop_ratio)
    ids = np.unique(np.concatenate([seq[seq >= 0], target]))
    local = lambda x: np.where(x >= 0, np.searchsorted(ids, np.maximum(x, 0)), -1)  # noqa: E731
    device = text.device
    rows = torch.from_numpy(ids).to(device)
    table = net.adaptor(text[rows])                                           # (U, hidden)
    seq_local, aug_local = local(seq), local(aug)
    if word is not None:
        table_aug = torch.cat([table, net.adaptor(text_aug[rows])])            # (2U, hidden)
        aug_local = np.where(word, aug_local + len(ids), aug_local)
    else:
        table_aug = table
    s = F.normalize(net.encode(torch.from_numpy(seq_local).to(device), table), dim=-1)          # (B, hidden)
    s_aug = F.normalize(net.encode(torch.from_numpy(aug_local).to(device), table_aug), dim=-1)  # (B, hidden)
    v = F.normalize(table[torch.from_numpy(local(target)).to(device)], dim=-1)                 # (B, hidden)
    t = torch.from_numpy(target).to(device)
    same = (t.unsqueeze(1) == t.unsqueeze(0)) & ~torch.eye(len(t), dtype=torch.bool, device=device)
    labels = torch.arange(len(t), device=device)
    seq_item = F.cross_entropy((s @ v.T / config.temperature).masked_fill(same, float("-inf")), labels)
    seq_seq = F.cross_entropy((s @ s_aug.T / config.temperature).masked_fill(same, float("-inf")), labels)
    return seq_item + config.pretrain_lambda * seq_seq, float(seq_item.detach()), float(seq_seq.detach())


def pretrain(out: Path, sources: list, config: UniSRecConfig, device, text_cache: Path, seed: int) -> dict:
    """Pre-train the adaptor + transformer on the TRAIN splits of `sources` (no item IDs) and
    save the weights to ``out/pretrained.pt``; returns the stage's stats."""
    import dataclasses

    import pandas as pd
    import torch

    from bench.torch_utils import seed_torch
    from bench.training import epoch_bar

    seed_torch(seed)
    rng = np.random.default_rng(seed)
    frames, texts, texts_aug, n_users, n_items, per_source = [], [], [], 0, 0, {}
    for source in sources:
        frame = source.train[["user", "item", "timestamp"]].copy()
        frame["user"] += n_users
        frame["item"] += n_items
        frames.append(frame)
        source_texts = item_texts(source.items)
        texts.append(cached_text_embeddings(source_texts, config.encoder, text_cache)[0])
        texts_aug.append(cached_text_embeddings(_word_drop(source_texts, config.word_drop_ratio, rng),
                                                config.encoder, text_cache)[0])
        per_source[source.dataset] = {"split": source.hash, "n_items": source.n_items,
                                      "n_train_rows": len(source.train),
                                      "n_prefixes": len(_Prefixes(source.train, config.max_len))}
        n_users, n_items = n_users + source.n_users, n_items + source.n_items
    prefixes = _Prefixes(pd.concat(frames, ignore_index=True), config.max_len)
    text = torch.from_numpy(np.vstack(texts)).to(device)
    text_aug = torch.from_numpy(np.vstack(texts_aug)).to(device)
    net = _build_network(n_items, text.shape[1], dataclasses.replace(config, item_id_embedding=False)).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.pretrain_lr, weight_decay=config.weight_decay)
    losses, parts = [], []
    net.train()
    for _ in epoch_bar(config.pretrain_epochs, "unisrec pre-training"):
        epoch = []
        for rows in _epoch_batches(prefixes, config.pretrain_batch_size, config.bucket_by_length, rng):
            loss, seq_item, seq_seq = _pretrain_loss(net, *prefixes.batch(rows), text, text_aug, config, rng)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch.append((float(loss.detach()), seq_item, seq_seq))
        mean = np.mean(epoch, axis=0) if epoch else np.full(3, np.nan)
        losses.append(round(float(mean[0]), 5))
        parts.append([round(float(x), 5) for x in mean[1:]])
    torch.save(net.state_dict(), out / "pretrained.pt")
    return {"sources": per_source, "n_prefixes": len(prefixes), "n_items": n_items, "epochs": len(losses),
            "losses": losses, "seq_item_seq_seq_losses": parts,
            "final_loss": losses[-1] if losses else None}


# --- the model -----------------------------------------------------------------------------------

class UniSRec(Model):
    """UniSRec as in the paper: pre-trained on the source domains, then fine-tuned on the target."""

    Config = UniSRecConfig
    pretrained = True  # False: `unisrec-scratch`, one stage on the target

    @classmethod
    def job_config(cls, config: UniSRecConfig, dataset: str, datasets: tuple[str, ...]) -> UniSRecConfig:
        """The sources of the job on `dataset`: the named ones, else the preset's datasets; never
        `dataset` itself."""
        import dataclasses

        if not cls.pretrained:
            return config
        named = config.pretrain_datasets or datasets
        return dataclasses.replace(config, pretrain_datasets=tuple(d for d in dict.fromkeys(named) if d != dataset))

    def _pretrained_state(self, split, config: UniSRecConfig, workdir: Path | None) -> dict | None:
        """The pre-trained weights for fine-tuning on `split` (the stage computed or reused), or
        None when there is nothing to pre-train on; fills ``self.pretraining``."""
        import torch

        from bench.stages import run_stage
        from bench.torch_utils import pick_device

        self.pretraining = None
        if not self.pretrained:
            return None
        if not any(item_texts(split.items)):
            self.pretraining = {"skipped": "the target has no item text, so there is no adaptor to transfer"}
            return None
        sources, skipped = load_sources(split, config.pretrain_datasets)
        self.pretraining = {"datasets": [s.dataset for s in sources], "without_text": skipped,
                            "target_left_out": split.dataset in config.pretrain_datasets}
        if not sources:
            logger.warning("%s: %s (sources named: %s)", split.dataset, NO_SOURCE_WARNING,
                           ", ".join(config.pretrain_datasets) or "none")
            self.pretraining["warning"] = NO_SOURCE_WARNING
            return None
        device = pick_device(config.device)
        seed = int(hash_json({"seed": config.seed, "stage": "unisrec-pretrain"})[:8], 16)
        key = {"stage": "unisrec-pretrain", "version": PRETRAIN_STAGE_VERSION, "seed": config.seed,
               "sources": sorted([s.dataset, s.hash] for s in sources),
               **{k: getattr(config, k) for k in _PRETRAIN_KEYS}}
        root = pretrain_root(workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="unisrec-")))
        directory = root / f"pretrain-{hash_json(key)}"
        record = run_stage(directory, key, lambda out: pretrain(out, sources, config, device, root / "text", seed))
        self.pretraining.update({k: record.get(k) for k in (
            "cached", "seconds", "epochs", "final_loss", "losses", "seq_item_seq_seq_losses", "n_prefixes",
            "n_items", "sources")}, stage=str(directory))
        return torch.load(directory / "pretrained.pt", map_location="cpu", weights_only=True)

    def _setup(self, split, config: UniSRecConfig, workdir: Path | None, pretrained: dict | None = None) -> None:
        """Encode (or read) the item texts and build the network (from the `pretrained` weights
        when given), optimiser and training pairs."""
        import torch

        from bench.torch_utils import pick_device, seed_torch

        if config.hidden_size % config.n_heads:
            raise ConfigError(f"unisrec: hidden_size {config.hidden_size} is not divisible by n_heads {config.n_heads}")
        seed_torch(config.seed)
        self.config, self.split, self.device = config, split, pick_device(config.device)
        self.rng = np.random.default_rng(config.seed)
        texts = item_texts(split.items)
        self.n_without_text = sum(not t for t in texts)
        self.warning = None
        self.cache_hit = None
        if self.n_without_text == len(texts):
            self.warning = NO_TEXT_WARNING
            logger.warning("%s: no item has a title, brand or category; %s", split.dataset, NO_TEXT_WARNING)
            text = None
        else:
            if self.n_without_text:
                logger.warning("%s: %d of %d items have no text; they share the empty-text embedding",
                               split.dataset, self.n_without_text, len(texts))
            text, self.cache_hit = cached_text_embeddings(texts, config.encoder, workdir)
        self.net = _build_network(split.n_items, None if text is None else text.shape[1], config).to(self.device)
        if text is not None:
            self.net.text.copy_(torch.from_numpy(text))
        self.frozen = False
        if pretrained is not None and self.net.adaptor is not None:
            missing, unexpected = self.net.load_state_dict(pretrained, strict=False)
            if unexpected or any(not k.startswith("item_embedding.") for k in missing):
                raise ConfigError(f"unisrec: the pre-trained weights do not fit the model (missing {missing}, "
                                  f"unexpected {unexpected})")
            if config.freeze_encoder:  # the authors' fix_enc: position embeddings + transformer stay
                for module in (self.net.position, self.net.blocks):
                    module.requires_grad_(False)
                self.frozen = True
        trainable = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trainable, lr=config.lr, weight_decay=config.weight_decay)
        self.prefixes = _Prefixes(split.train, config.max_len)
        self._items_eval = None

    def _step(self, seq: np.ndarray, target: np.ndarray) -> float:
        """One optimiser step on a batch of prefixes (B, max_len) and next items (B,); the loss."""
        import torch
        from torch.nn import functional as F

        self.net.train()
        self._items_eval = None
        logits = self.net.logits(torch.from_numpy(seq).to(self.device))
        loss = F.cross_entropy(logits, torch.from_numpy(target).to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def _batches(self) -> list[np.ndarray]:
        return _epoch_batches(self.prefixes, self.config.batch_size, self.config.bucket_by_length, self.rng)

    def _epoch(self) -> float:
        losses = [self._step(*self.prefixes.batch(rows)) for rows in self._batches()]
        return float(np.mean(losses)) if losses else float("nan")

    def fit(self, split, config: UniSRecConfig, workdir: Path) -> None:
        t0 = time.perf_counter()
        # Pre-training first: it seeds itself, so fine-tuning starts from the same random state
        # whether the stage is computed or reused.
        self._setup(split, config, workdir, self._pretrained_state(split, config, workdir))
        def restore(state) -> None:
            self.net.load_state_dict(state)
            self._items_eval = None

        self.losses, self.valid_values, stopper = fit_with_early_stopping(
            self, split, epochs=config.epochs, patience=config.patience, metric=config.valid_metric,
            train_epoch=self._epoch, snapshot=lambda: clone_state(self.net), restore=restore, desc="unisrec")
        self.best_epoch, self.best_value = stopper.best_epoch, stopper.best
        self.fit_seconds = time.perf_counter() - t0

    def score(self, users: np.ndarray, history) -> np.ndarray:
        """(len(users), n_items) cosine / temperature of each user's last `max_len` history items."""
        import torch
        from torch.nn import functional as F

        from bench.data.sequences import padded_histories

        self.net.eval()
        seqs = padded_histories(self.split, np.asarray(users), history, self.config.max_len)
        out = np.empty((len(users), self.split.n_items), dtype=np.float32)
        with torch.no_grad():
            if self._items_eval is None:  # noise-free, dropout-free item table, reused until the next step
                self._items_eval = self.net.items()
            items = F.normalize(self._items_eval, dim=-1)
            bs = self.config.score_batch_size
            for s in range(0, len(users), bs):
                seq = torch.from_numpy(seqs[s:s + bs]).to(self.device)
                user = F.normalize(self.net.encode(seq, self._items_eval), dim=-1)
                out[s:s + len(seq)] = (user @ items.T / self.config.temperature).float().cpu().numpy()
        return out

    def extra_result(self) -> dict:
        net = getattr(self, "net", None)
        if net is None:
            return {}
        count = lambda module: 0 if module is None else sum(p.numel() for p in module.parameters())  # noqa: E731
        pretraining = getattr(self, "pretraining", None) or {}
        out = {
            "epochs": len(self.losses),
            "best_epoch": self.best_epoch + 1,
            f"best_valid_{self.config.valid_metric}": None if not np.isfinite(self.best_value) else self.best_value,
            "final_loss": self.losses[-1] if self.losses else None,
            "losses": [round(x, 5) for x in self.losses],
            "n_parameters": count(net),
            "n_trainable_parameters": sum(p.numel() for p in net.parameters() if p.requires_grad),
            "n_adaptor_parameters": count(net.adaptor),
            "n_id_embedding_parameters": count(net.item_embedding),
            "text": net.adaptor is not None,
            "encoder": (self.config.encoder or DEFAULT_ENCODER) if net.adaptor is not None else None,
            "text_cache_hit": self.cache_hit,
            "n_items_without_text": self.n_without_text,
            "n_train_prefixes": len(self.prefixes),
            "pretrained": "stage" in pretraining,  # fine-tuned from pre-trained weights
            "pretraining": pretraining or None,
            "frozen_encoder": self.frozen,
            "device": str(self.device),
            "fit_seconds": round(getattr(self, "fit_seconds", 0.0), 3),
        }
        warnings = [w for w in (self.warning, pretraining.get("warning")) if w]
        if warnings:
            out["warning"] = "; ".join(warnings)
        return out


class UniSRecScratch(UniSRec):
    """`unisrec-scratch`: no pre-training; adaptor + transformer (+ ID embeddings) trained from
    scratch on the target alone, in one stage (what `unisrec` was before pre-training existed)."""

    pretrained = False
