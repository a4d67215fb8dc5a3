"""PageLLM (arXiv 2506.09084) as registered models: ``pagellm`` (mixed reward), ``pagellm-item``
(item-level reward only), ``pagellm-page`` (page-level only) and ``pagellm-sft`` (no reward:
the paper's "w/o Reward"), Table 1 and Appendix G.

Pipeline (each stage a folder written atomically, skipped when it exists with the same key hash):

    pagellm.data.build(split)                                   golden lists, prompts, pairs (TRAIN only)
    pretrain     meta-information pre-training (eq. 2 + 3)      pagellm.sft.pretrain
    finetune     ground-truth fine-tuning (eq. 4), early       pagellm.sft.finetune
                 stopping on the valid metric
    lists        the fine-tuned policy's greedy and sampled     pagellm.backbones.decode_items
                 lists of every training prompt (rollout length)
    reward-page  page-level reward model (eq. 5 + 8) on the     pagellm.reward, pagellm.pairs
                 pairs completed to rollout length + on-policy
    reward-item  item-level reward model (eq. 6 + 8 + token     pagellm.reward, pagellm.pairs
                 labels), same pairs
    ppo          PPO from the fine-tuned policy (eq. 9-11)      pagellm.ppo (per variant, in the workdir)

The first four stages do not depend on the variant: they live in a folder shared by the
variants of one (preset, dataset, split, seed),
``<root>/work/<preset>/<dataset>/<split>/pagellm-shared/seed<k>/<stage>-<key hash>``, so a run
of all four variants pre-trains, fine-tunes and trains each reward model once. A stage key
holds the settings the stage reads plus the key of the stage it starts from, so changing PPO
settings reuses every shared stage and changing the reward settings reuses the fine-tuned
model. Stages of concurrent jobs are serialised by a lock file. A workdir outside the runner's
layout keeps its shared stages in ``<workdir>/shared``.

Ranking (the same for every variant): for each user, the B.2 prompt of the user's history (the
items of the harness's ``history``, chronological, with their ratings, as in training; option
``inference_prompt``), then greedy item-only decoding of k items
(`pagellm.backbones.decode_items`): each position takes the highest-scoring item token that is
not in the history and not already listed, so a list never holds a non-item token, a repeat or
a seen item. Batched over users; on the GPU when there is one. This approximates the paper's
argmax over lists (eq. 12) one position at a time.

LoRA (``lora``: auto = on for llama-3.2-1b only, the paper's setting): each training stage adds
fresh adapters (rank ``lora_r`` on the attention projections, the new user/item token rows
trainable) and merges them into the weights it saves; the PPO reference is the policy with its
adapters switched off.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np

from bench.errors import ConfigError
from bench.io import hash_json
from bench.models import Model, ModelConfig
from bench.scoring import validate
from bench.stages import run_stage

logger = logging.getLogger(__name__)

STAGE_VERSION = 2  # bump when a stage's training code changes: every stage is recomputed
VARIANTS = ("mixed", "item", "page", "none")
INFERENCE_PROMPTS = ("history", "train-input")


@dataclass(frozen=True)
class PageLLMConfig(ModelConfig):
    # --- backbone
    backbone: str = field(default="gpt2", metadata={
        "help": "tiny | gpt2-random (GPT-2's size, random, offline) | gpt2 (paper) | smollm2-135m (offline) | "
                "llama-3.2-1b (paper, Table 3)"})
    backbone_path: str = field(default="", metadata={
        "help": "hub name or local directory replacing the default of gpt2 / llama-3.2-1b"})
    lora: str = field(default="auto", metadata={"help": "auto (on for llama-3.2-1b only) | on | off"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    dtype: str = field(default="float32", metadata={"help": "weights dtype: float32 | bfloat16 | float16"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    max_prompt_tokens: int = field(default=512, metadata={
        "help": "prompt/text length cap in tokens (longer ones keep their first quarter and their end)"})
    # --- data (pagellm.data.DataConfig, prefixed data_)
    data_label_fraction: float = field(default=0.5, metadata={"help": "data: share of train positives as label list"})
    data_max_list_len: int = field(default=20, metadata={"help": "data: cap on label-list and pair length"})
    data_max_history: int = field(default=50, metadata={"help": "data: most recent history items in a prompt"})
    data_prompt_ratings: bool = field(default=True, metadata={"help": "data: ratings after history items"})
    data_diversity_lambda: float = field(default=1.0, metadata={"help": "data: golden-list diversity weight"})
    data_redundancy_title_jaccard: float = field(default=0.6, metadata={"help": "data: near-duplicate title Jaccard"})
    data_pairs_per_user: int = field(default=1, metadata={"help": "data: pairs per user and family"})
    data_replace_fraction: float = field(default=0.5, metadata={"help": "data: replaced share in rejected lists"})
    data_ranked_swaps: int = field(default=1, metadata={"help": "data: swaps per ranked pair"})
    data_redundancy_allow_repeat: bool = field(default=False, metadata={"help": "data: repeat item if no duplicate"})
    data_heldout_fraction: float = field(default=0.1, metadata={"help": "data: share of users with held-out pairs"})
    data_second_order_group_size: int = field(default=5, metadata={"help": "data: items per 2nd-order prompt"})
    data_max_description_words: int = field(default=30, metadata={"help": "data: description words in item prompts"})
    data_max_review_words: int = field(default=60, metadata={
        "help": "data: review words quoted in pre-training and rating prompts (0 = none)"})
    data_seed: int = field(default=0, metadata={"help": "data: seed of the data construction (fixed across seeds)"})
    # --- meta-information pre-training (5.1.2)
    pretrain_epochs: int = field(default=1, metadata={"help": "pre-training epochs over the B.1 texts (0 = skip)"})
    pretrain_batch_size: int = field(default=8, metadata={"help": "texts (and rating prompts) per step"})
    pretrain_lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate of pre-training"})
    rating_weight: float = field(default=1.0, metadata={"help": "weight of the rating MSE (eq. 2) next to eq. 3"})
    # --- ground-truth fine-tuning (5.1.3)
    finetune_epochs: int = field(default=10, metadata={"help": "maximum fine-tuning epochs"})
    finetune_batch_size: int = field(default=16, metadata={"help": "users per fine-tuning step"})
    finetune_lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate of fine-tuning"})
    patience: int = field(default=3, metadata={
        "help": "fine-tuning stops after this many epochs without a better valid metric (0 = no validation)"})
    valid_metric: str = field(default="ndcg@20", metadata={"help": "early-stopping metric on the valid split"})
    # --- reward models (5.2)
    rm_epochs: int = field(default=2, metadata={"help": "reward-model epochs over the training pairs"})
    rm_batch_size: int = field(default=16, metadata={"help": "pairs per reward-model step"})
    rm_lr: float = field(default=5e-5, metadata={"help": "AdamW learning rate of the reward models"})
    rm_token_weight: float = field(default=1.0, metadata={
        "help": "item model: weight of a per-token BCE on the pairs' position labels (0 = eq. 8 only)"})
    rm_on_policy: bool = field(default=True, metadata={
        "help": "reward pairs: complete every pair to the rollout length with the fine-tuned policy's greedy list "
                "and add on-policy pairs (golden page vs the policy's greedy and sampled lists); off = the data "
                "module's pairs as they are"})
    rm_valid_fraction: float = field(default=0.1, metadata={
        "help": "share of the reward models' training users whose pairs choose the number of epochs (0 = none)"})
    rm_patience: int = field(default=2, metadata={
        "help": "reward models stop after this many epochs without a better validation pair accuracy and keep "
                "the best epoch (0 = train rm_epochs, keep the last)"})
    rm_item_logprob: bool = field(default=True, metadata={
        "help": "item reward r_t = head(h_t) + log p(item_t | context) under the reward model's own LM head "
                "(off = head(h_t) only, eq. 6 as written)"})
    rm_warn_below: float = field(default=0.6, metadata={
        "help": "log a warning when a reward model's held-out pair accuracy is below this"})
    item_weight: float = field(default=1.0, metadata={"help": "w in the mixed reward R_page + w * R_item"})
    # --- PPO (5.3, Appendix D.2)
    ppo_epochs: int = field(default=5, metadata={"help": "PPO epochs over the training prompts (paper: 5)"})
    ppo_batch_size: int = field(default=64, metadata={"help": "prompts per PPO rollout (paper: 64)"})
    ppo_mini_batch_size: int = field(default=16, metadata={"help": "rows per PPO gradient step"})
    ppo_inner_epochs: int = field(default=4, metadata={"help": "passes over each rollout"})
    ppo_list_len: int = field(default=20, metadata={"help": "items per sampled list"})
    ppo_lr: float = field(default=1e-5, metadata={"help": "AdamW learning rate of PPO (paper: 1e-5)"})
    kl_coef: float = field(default=0.05, metadata={"help": "per-token KL penalty to the fine-tuned policy (initial "
                                                           "value when kl_target > 0)"})
    kl_target: float = field(default=0.0, metadata={
        "help": "> 0: adaptive KL coefficient (Ziegler et al. 2019) aiming at this KL per list; 0 = fixed kl_coef"})
    kl_horizon: int = field(default=10000, metadata={"help": "adaptive KL controller horizon (lists)"})
    clip_range: float = field(default=0.2, metadata={"help": "PPO ratio clip (paper: 0.2)"})
    clip_range_value: float = field(default=0.2, metadata={"help": "value clip"})
    vf_coef: float = field(default=0.1, metadata={"help": "value-loss weight"})
    ent_coef: float = field(default=0.0, metadata={"help": "entropy bonus weight"})
    gamma: float = field(default=1.0, metadata={"help": "discount (paper: 1)"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda"})
    temperature: float = field(default=1.0, metadata={
        "help": "policy temperature in PPO (rollouts, ratios, KL, entropy) and in the sampled on-policy pairs"})
    ppo_monitor_users: int = field(default=256, metadata={
        "help": "training prompts whose greedy lists are scored and compared after every PPO epoch"})
    reward_normalization: bool = field(default=True, metadata={"help": "standardise reward-model scores (paper)"})
    # --- ranking
    inference_prompt: str = field(default="history", metadata={
        "help": "history (the harness's history, as training prompts render it) | train-input (the SFT prompt)"})
    rank_batch_size: int = field(default=64, metadata={"help": "users decoded together"})

    def __post_init__(self) -> None:
        from pagellm.backbones import BACKBONES

        if self.backbone not in BACKBONES:
            raise ConfigError(f"pagellm.backbone must be one of {', '.join(BACKBONES)}, not {self.backbone!r}")
        if self.lora not in ("auto", "on", "off"):
            raise ConfigError(f"pagellm.lora must be auto, on or off, not {self.lora!r}")
        if self.inference_prompt not in INFERENCE_PROMPTS:
            raise ConfigError(f"pagellm.inference_prompt must be one of {', '.join(INFERENCE_PROMPTS)}")

    @property
    def use_lora(self) -> bool:
        return self.lora == "on" or (self.lora == "auto" and self.backbone == "llama-3.2-1b")

    def data_config(self):
        from pagellm.data import DataConfig

        return DataConfig(**{f.name: getattr(self, f"data_{f.name}") for f in fields(DataConfig)})

    def ppo_settings(self):
        from pagellm.ppo import PPOSettings

        return PPOSettings(epochs=self.ppo_epochs, batch_size=self.ppo_batch_size,
                           mini_batch_size=self.ppo_mini_batch_size, inner_epochs=self.ppo_inner_epochs,
                           list_len=self.ppo_list_len, lr=self.ppo_lr, kl_coef=self.kl_coef,
                           clip_range=self.clip_range, clip_range_value=self.clip_range_value,
                           vf_coef=self.vf_coef, ent_coef=self.ent_coef, gamma=self.gamma, lam=self.lam,
                           temperature=self.temperature, kl_target=self.kl_target, kl_horizon=self.kl_horizon)


# Which settings each stage reads (its key also holds the key of the stage it starts from).
_BACKBONE_KEYS = ("backbone", "backbone_path", "lora", "lora_r", "lora_alpha", "lora_dropout", "dtype",
                  "max_prompt_tokens")
_STAGE_FIELDS = {
    "pretrain": ("pretrain_epochs", "pretrain_batch_size", "pretrain_lr", "rating_weight"),
    "finetune": ("finetune_epochs", "finetune_batch_size", "finetune_lr", "patience", "valid_metric",
                 "inference_prompt"),
    "lists": ("ppo_list_len", "temperature"),
    "reward": ("rm_epochs", "rm_batch_size", "rm_lr", "rm_token_weight", "rm_on_policy", "rm_valid_fraction",
               "rm_patience", "rm_item_logprob"),
    "ppo": ("ppo_epochs", "ppo_batch_size", "ppo_mini_batch_size", "ppo_inner_epochs", "ppo_list_len", "ppo_lr",
            "kl_coef", "kl_target", "kl_horizon", "clip_range", "clip_range_value", "vf_coef", "ent_coef", "gamma",
            "lam", "temperature", "reward_normalization", "item_weight", "ppo_monitor_users"),
}


# What each stage's record contributes to the result's model_info.stages.
_REPORTED_STAGE_FIELDS = ("cached", "seconds", "seconds_per_epoch", "memory", "parameters", "epochs", "best_epoch",
                          "valid", "n_pairs", "n_pairs_by_family", "n_valid_pairs", "n_heldout_pairs", "n_examples",
                          "mean_score", "kl", "n_users", "jaccard20_greedy_sampled", "label_share_in_greedy_head")


def shared_dir(workdir: Path) -> Path:
    """Where the variant-independent stages of this job live (see the module docstring)."""
    workdir = Path(workdir)
    parents = workdir.parents
    if len(parents) >= 5 and parents[4].name == "work" and workdir.name.startswith("seed"):
        return workdir.parent.parent / "pagellm-shared" / workdir.name
    return workdir / "shared"


def _load_data(split, config: PageLLMConfig):
    """The PageLLM data view of `split` (built once, reused from disk: pagellm.data)."""
    from pagellm import data

    return data.build(split, config.data_config())


class PageLLM(Model):
    """PageLLM with the mixed (page + item) reward. Subclasses change `variant` only."""

    Config = PageLLMConfig
    variant = "mixed"

    @classmethod
    def check(cls, config: PageLLMConfig, name: str) -> None:
        """A hub backbone (gpt2, llama-3.2-1b) with the hub offline and no cached copy fails here, fast."""
        from pagellm.backbones import check_available

        check_available(config.backbone, config.backbone_path, scope=name)

    # ------------------------------------------------------------------ training
    def fit(self, split, config: PageLLMConfig, workdir: Path) -> None:
        import torch

        from bench import progress
        from bench.torch_utils import pick_device, seed_torch

        t_fit = time.perf_counter()
        self.config, self.split = config, split
        self.device = pick_device(config.device)
        workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="pagellm-"))
        shared = shared_dir(workdir)
        self.stages: dict[str, dict] = {}
        self._lookup = _HistoryLookup(split)
        data = _load_data(split, config)
        self.data = data
        base_key = {"version": STAGE_VERSION, "split": split.hash, "data": config.data_config().hash,
                    "seed": config.seed, **{k: getattr(config, k) for k in _BACKBONE_KEYS}}

        def key_of(stage: str, parent: dict | None, **extra) -> dict:
            return {"stage": stage, "parent": hash_json(parent) if parent else None,
                    **{k: getattr(config, k) for k in _STAGE_FIELDS.get(stage.split("-")[0], ())}, **extra}

        needed = {"mixed": ("page", "item"), "page": ("page",), "item": ("item",), "none": ()}[self.variant]
        n_stages = 2 + (bool(config.rm_on_policy) + len(needed) + 1 if needed else 0)
        stage_bar = progress.bar(total=n_stages, desc=f"pagellm ({self.variant}) stages", unit="stage")

        def stage(name: str, directory: Path, key: dict, work: Callable[[Path], dict]) -> None:
            stage_bar.set_postfix_str(name, refresh=True)
            self.stages[name] = run_stage(directory, key, work)
            stage_bar.update()

        pre_key = {**base_key, **key_of("pretrain", None)}
        pre_dir = shared / f"pretrain-{hash_json(pre_key)}"
        stage("pretrain", pre_dir, pre_key, lambda d: self._pretrain(d, data))
        ft_key = key_of("finetune", pre_key)
        ft_dir = shared / f"finetune-{hash_json(ft_key)}"
        stage("finetune", ft_dir, ft_key, lambda d: self._finetune(d, pre_dir, data))
        final_dir = ft_dir
        self.reward_accuracy = None
        if self.variant != "none":
            lists_key = key_of("lists", ft_key)
            lists_dir = shared / f"lists-{hash_json(lists_key)}"
            if config.rm_on_policy:
                stage("lists", lists_dir, lists_key, lambda d: self._policy_lists(d, ft_dir, data))
            rm_dirs, rm_keys = {}, {}
            for kind in needed:
                rm_keys[kind] = key_of(f"reward-{kind}", lists_key, kind=kind)
                rm_dirs[kind] = shared / f"reward-{kind}-{hash_json(rm_keys[kind])}"
                stage(f"reward-{kind}", rm_dirs[kind], rm_keys[kind],
                      lambda d, kind=kind: self._reward(d, kind, ft_dir, lists_dir, data))
            ppo_key = key_of("ppo", ft_key, variant=self.variant,
                             rewards={k: hash_json(v) for k, v in rm_keys.items()})
            final_dir = workdir / f"ppo-{hash_json(ppo_key)}"
            stage("ppo", final_dir, ppo_key, lambda d: self._ppo(d, ft_dir, rm_dirs, lists_dir, data))
            self.reward_accuracy = {kind: self.stages[f"reward-{kind}"].get("heldout_accuracy", {}).get(kind)
                                    for kind in needed}
            if "mixed" in (self.stages["ppo"].get("heldout_accuracy") or {}):
                self.reward_accuracy["mixed"] = self.stages["ppo"]["heldout_accuracy"]["mixed"]
            self._warn_weak_rewards()
        stage_bar.close()
        seed_torch(config.seed)
        self.policy = self._load(final_dir)
        self.policy.model.eval()
        self.fit_seconds = time.perf_counter() - t_fit
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _stage_seed(self, stage: str) -> int:
        """Each stage seeds itself, so a stage gives the same result whether or not the stages
        before it were reused from disk."""
        return int(hash_json({"seed": self.config.seed, "stage": stage})[:8], 16)

    def _generator(self, stage: str):
        import torch

        from bench.torch_utils import seed_torch

        seed = self._stage_seed(stage)
        seed_torch(seed)
        return torch.Generator().manual_seed(seed)

    def _load(self, directory: Path):
        from pagellm.backbones import load_checkpoint

        return load_checkpoint(directory, self.device, self.config.dtype)

    def _train_view(self, backbone):
        """Wrap with fresh LoRA adapters when configured; the backbone to train."""
        c = self.config
        if c.use_lora:
            backbone.add_lora(c.lora_r, c.lora_alpha, c.lora_dropout)
        return backbone

    def _pretrain(self, out: Path, data) -> dict:
        import torch

        from pagellm.backbones import load_backbone
        from pagellm.sft import pretrain

        c = self.config
        generator = self._generator("pretrain")
        texts = list(data.pretrain_texts) + [r[3] for r in data.rating_examples] + \
            list(data.finetune_prompts.values())
        backbone = load_backbone(c.backbone, self.split.n_users, self.split.n_items, self.device,
                                 source=c.backbone_path, texts=texts, dtype=c.dtype, seed=self._stage_seed("init"))
        backbone = self._train_view(backbone)
        counts = backbone.parameter_counts()
        head, log = pretrain(backbone, data.pretrain_texts, data.rating_examples, epochs=c.pretrain_epochs,
                             batch_size=c.pretrain_batch_size, lr=c.pretrain_lr, rating_weight=c.rating_weight,
                             max_tokens=c.max_prompt_tokens, generator=generator)
        backbone.save(out)
        torch.save(head.state_dict(), out / "rating_head.pt")
        return {"parameters": counts, "n_texts": len(data.pretrain_texts),
                "n_rating_examples": len(data.rating_examples), **log.summary()}

    def _examples(self, backbone, data):
        from pagellm.sft import ListExample

        users = sorted(u for u, items in data.label_lists.items() if items and u in data.finetune_prompts)
        ids = backbone.encode([data.finetune_prompts[u] for u in users], self.config.max_prompt_tokens,
                              reserve=self._list_room())
        return [ListExample(u, p, list(data.label_lists[u]), list(data.input_items.get(u, []))) for u, p in
                zip(users, ids)]

    def _finetune(self, out: Path, pre_dir: Path, data) -> dict:
        from bench.progress import note
        from bench.training import EarlyStopping, clone_state
        from pagellm.sft import finetune

        c = self.config
        generator = self._generator("finetune")
        backbone = self._train_view(self._load(pre_dir))
        counts = backbone.parameter_counts()
        examples = self._examples(backbone, data)
        self.policy = backbone  # rank() uses it for validation
        stopper = EarlyStopping(c.patience, snapshot=lambda: clone_state(backbone.model)) if c.patience > 0 else None
        valid_log = []

        def on_epoch_end(epoch: int) -> bool:
            if stopper is None:
                return False
            value = validate(self, self.split, c.valid_metric)
            valid_log.append(round(value, 6))
            note(**{c.valid_metric: value})
            return stopper.update(epoch, value)

        log = finetune(backbone, examples, epochs=c.finetune_epochs, batch_size=c.finetune_batch_size,
                       lr=c.finetune_lr, generator=generator, on_epoch_end=on_epoch_end)
        if stopper is not None and stopper.best_state is not None:
            backbone.model.load_state_dict(stopper.best_state)
        backbone.save(out)
        self.policy = None
        return {"parameters": counts, "n_examples": len(examples), "valid": valid_log,
                "best_epoch": stopper.best_epoch if stopper else None, **log.summary()}

    def _prompt_ids(self, backbone, data) -> dict[int, list[int]]:
        users = sorted(data.finetune_prompts)
        ids = backbone.encode([data.finetune_prompts[u] for u in users], self.config.max_prompt_tokens,
                              reserve=self._list_room())
        return dict(zip(users, ids))

    def _list_room(self) -> int:
        """List tokens that may follow a training prompt (label lists, pairs, PPO rollouts)."""
        return max(self.config.data_max_list_len, self.config.ppo_list_len)

    def _training_users(self, data) -> list[int]:
        """Users with a fine-tuning prompt and a label list: the prompts of the reward and PPO stages."""
        return sorted(u for u in data.finetune_prompts if u in data.label_lists)

    def _policy_lists(self, out: Path, ft_dir: Path, data) -> dict:
        """The fine-tuned policy's greedy list and one list sampled at `temperature`, of length
        `ppo_list_len`, for every training prompt (what PPO's first rollouts look like)."""
        import json

        import torch

        from pagellm.backbones import decode_many
        from pagellm.ppo import jaccard_at

        c = self.config
        generator = self._generator("lists")
        policy = self._load(ft_dir)
        policy.model.eval()
        users = self._training_users(data)
        prompts = policy.encode([data.finetune_prompts[u] for u in users], c.max_prompt_tokens,
                                reserve=self._list_room())
        banned = [list(data.input_items.get(u, [])) for u in users]
        steps = min(c.ppo_list_len, self.split.n_items)
        greedy = decode_many(policy, prompts, banned, steps, batch_size=c.rank_batch_size)
        # The sampling stream is drawn from the stage's generator (the draw happens on the model's device).
        sampler = torch.Generator(device=policy.device).manual_seed(
            int(torch.randint(2**62, (1,), generator=generator)))
        sampled = decode_many(policy, prompts, banned, steps, batch_size=c.rank_batch_size, sample=True,
                              temperature=c.temperature, generator=sampler)
        with open(out / "lists.jsonl", "w", encoding="utf-8") as fh:
            for u, g, x in zip(users, greedy.tolist(), sampled.tolist()):
                fh.write(json.dumps({"user": u, "greedy": [i for i in g if i >= 0],
                                     "sampled": [i for i in x if i >= 0]}) + "\n")
        label_hits = [len(set(data.label_lists[u]) & set(g[:len(data.label_lists[u])])) / len(data.label_lists[u])
                      for u, g in zip(users, greedy.tolist())]
        return {"parameters": policy.parameter_counts(), "n_users": len(users), "list_len": steps,
                "jaccard20_greedy_sampled": round(float(jaccard_at(greedy, sampled, 20).mean()), 4) if users else None,
                "label_share_in_greedy_head": round(float(np.mean(label_hits)), 4) if users else None}

    @staticmethod
    def _read_lists(lists_dir: Path) -> tuple[dict, dict]:
        import json

        greedy, sampled = {}, {}
        path = lists_dir / "lists.jsonl"
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                greedy[row["user"]], sampled[row["user"]] = row["greedy"], row["sampled"]
        return greedy, sampled

    def _reward_pairs(self, data, lists_dir: Path) -> tuple[list, list]:
        """(train pairs, held-out pairs) of the reward models: `pagellm.pairs` at rollout length, or
        the data module's pairs as they are when `rm_on_policy` is off."""
        from pagellm.pairs import rollout_length_pairs

        if not self.config.rm_on_policy:
            return list(data.pairs_train), list(data.pairs_heldout)
        greedy, sampled = self._read_lists(lists_dir)
        length = min(self.config.ppo_list_len, self.split.n_items)
        heldout = set(data.heldout_users)
        users = self._training_users(data)
        train = rollout_length_pairs(data.pairs_train, data.label_lists, greedy, sampled, length,
                                     users=[u for u in users if u not in heldout])
        held = rollout_length_pairs(data.pairs_heldout, data.label_lists, greedy, sampled, length,
                                    users=[u for u in users if u in heldout])
        return train, held

    def _reward(self, out: Path, kind: str, ft_dir: Path, lists_dir: Path, data) -> dict:
        import torch

        from pagellm.reward import RewardModels, new_reward_model, pair_accuracy, train_reward_model

        c = self.config
        generator = self._generator(f"reward-{kind}")
        backbone = self._train_view(self._load(ft_dir))
        rm = new_reward_model(backbone, kind, logprob=kind == "item" and c.rm_item_logprob)
        pairs_train, pairs_heldout = self._reward_pairs(data, lists_dir)
        pairs, valid = self._valid_split(pairs_train)  # both kinds train on every family
        prompt_ids = self._prompt_ids(backbone, data)
        log = train_reward_model(rm, pairs, prompt_ids, epochs=c.rm_epochs, batch_size=c.rm_batch_size, lr=c.rm_lr,
                                 token_weight=c.rm_token_weight if kind == "item" else 0.0, generator=generator,
                                 valid_pairs=valid, patience=c.rm_patience)
        accuracy = pair_accuracy(RewardModels(**{kind: rm}), pairs_heldout, prompt_ids)
        counts = backbone.parameter_counts()
        backbone.save(out)
        torch.save(rm.head.state_dict(), out / "head.pt")
        families: dict[str, int] = {}
        for p in pairs:
            families[p.kind] = families.get(p.kind, 0) + 1
        return {"parameters": counts, "n_pairs": len(pairs), "n_pairs_by_family": dict(sorted(families.items())),
                "n_valid_pairs": len(valid), "n_heldout_pairs": len(pairs_heldout), "heldout_accuracy": accuracy,
                **log.summary()}

    def _valid_split(self, pairs: list) -> tuple[list, list]:
        """(training pairs, validation pairs): the pairs of a seeded `rm_valid_fraction` of the users
        (at least one, when asked for and there are two or more) choose the reward models' epochs."""
        users = sorted({p.user for p in pairs})
        n = min(len(users) - 1, max(1, round(self.config.rm_valid_fraction * len(users)))) \
            if self.config.rm_valid_fraction > 0 and self.config.rm_patience > 0 and len(users) >= 2 else 0
        chosen = set(np.random.default_rng(self._stage_seed("rm-valid")).permutation(users)[:n].tolist())
        return [p for p in pairs if p.user not in chosen], [p for p in pairs if p.user in chosen]

    def _load_reward(self, directory: Path, kind: str):
        import torch

        from pagellm.reward import new_reward_model

        rm = new_reward_model(self._load(directory), kind, logprob=kind == "item" and self.config.rm_item_logprob)
        rm.head.load_state_dict(torch.load(directory / "head.pt", map_location=self.device, weights_only=True))
        for p in rm.parameters():
            p.requires_grad_(False)
        return rm.eval()

    def _reward_models(self, rm_dirs: dict):
        from pagellm.reward import RewardModels

        return RewardModels(**{kind: self._load_reward(d, kind) for kind, d in rm_dirs.items()})

    def _ppo(self, out: Path, ft_dir: Path, rm_dirs: dict, lists_dir: Path, data) -> dict:
        import torch

        from pagellm.ppo import PPOTrainer
        from pagellm.reward import ListReward, pair_accuracy

        c = self.config
        self._generator("ppo")
        policy = self._train_view(self._load(ft_dir))
        models = self._reward_models(rm_dirs)
        # Both models are loaded here anyway: the mixed reward's held-out accuracy is measured once.
        accuracy = pair_accuracy(models, self._reward_pairs(data, lists_dir)[1], self._prompt_ids(policy, data),
                                 item_weight=c.item_weight) if self.variant == "mixed" else None
        reward = ListReward(models, self.variant, c.item_weight, c.reward_normalization)
        # Each variant samples its own rollouts: a shared stream would correlate the ablations.
        trainer = PPOTrainer(policy, reward, c.ppo_settings(), seed=self._stage_seed(f"ppo-sampling-{self.variant}"))
        users = self._training_users(data)
        prompts = policy.encode([data.finetune_prompts[u] for u in users], c.max_prompt_tokens,
                                reserve=self._list_room())
        banned = [list(data.input_items.get(u, [])) for u in users]
        watch = np.random.default_rng(self._stage_seed("ppo-monitor")).permutation(len(users))[:c.ppo_monitor_users]
        watch = np.sort(watch)
        counts = policy.parameter_counts()
        log = trainer.train(prompts, banned, monitor=([prompts[i] for i in watch], [banned[i] for i in watch]))
        policy.save(out)  # merges LoRA adapters: `policy` is not used after this
        torch.save(trainer.value.state_dict(), out / "value_head.pt")
        last = log.epochs[-1] if log.epochs else {}
        return {"parameters": counts, "n_prompts": len(prompts), "heldout_accuracy": accuracy,
                "mean_score": last.get("score"), "kl": last.get("kl"), "curve": trainer.curve, **log.summary()}

    def _warn_weak_rewards(self) -> None:
        for kind, acc in (self.reward_accuracy or {}).items():
            if acc and acc.get("all") is not None and acc["all"] < self.config.rm_warn_below:
                logger.warning("PageLLM %s reward model: held-out pair accuracy %.3f < %.2f on %d pairs (%s): "
                               "near chance, so PPO has little to learn from", kind, acc["all"],
                               self.config.rm_warn_below, acc.get("n", 0), self.split.dataset)

    # ------------------------------------------------------------------ ranking
    def rank(self, users: np.ndarray, k: int, history) -> np.ndarray:
        """(len(users), k) item indices by greedy item-only decoding; -1 where nothing is left."""
        from pagellm.backbones import decode_many

        policy, c = self.policy, self.config
        users = np.asarray(users, dtype=np.int64)
        out = np.full((len(users), k), -1, dtype=np.int64)
        steps = min(k, self.split.n_items)
        seen = [history[r].indices.tolist() for r in range(len(users))]
        texts = [self._inference_prompt(int(u), s) for u, s in zip(users, seen)]
        prompts = policy.encode(texts, c.max_prompt_tokens, reserve=steps)
        out[:, :steps] = decode_many(policy, prompts, seen, steps, batch_size=c.rank_batch_size)
        return out

    def _inference_prompt(self, user: int, seen: list[int]) -> str:
        if self.config.inference_prompt == "train-input" and user in self.data.finetune_prompts:
            return self.data.finetune_prompts[user]
        return self._lookup.prompt(user, seen, self.config.data_config())

    # ------------------------------------------------------------------ reporting
    def extra_result(self) -> dict:
        import torch

        stages = {}
        for name, record in getattr(self, "stages", {}).items():
            stages[name] = {k: record.get(k) for k in _REPORTED_STAGE_FIELDS if record.get(k) is not None}
        peaks = [r.get("memory", {}) for r in getattr(self, "stages", {}).values()]
        info = {
            "variant": self.variant,
            "backbone": self.config.backbone if hasattr(self, "config") else None,
            "lora": self.config.use_lora if hasattr(self, "config") else None,
            "decoding": "greedy item-only, no history, no repeats",
            "fit_seconds": round(getattr(self, "fit_seconds", 0.0), 3),
            "stages": stages,
            "peak_gpu_mb": max((m.get("peak_gpu_mb", 0) for m in peaks), default=None) if torch.cuda.is_available()
            else None,
            "peak_rss_mb": max((m.get("peak_rss_mb", 0) for m in peaks), default=None),
            "reward_accuracy": getattr(self, "reward_accuracy", None),
        }
        if "ppo" in stages:
            info["ppo"] = {"mean_score": stages["ppo"].get("mean_score"), "kl": stages["ppo"].get("kl")}
            info["ppo_curve"] = self.stages["ppo"].get("curve")
        return info


class PageLLMItem(PageLLM):
    """Appendix G "Item-level": PPO with the item-level reward only."""

    variant = "item"


class PageLLMPage(PageLLM):
    """Appendix G "Page-level": PPO with the page-level reward only."""

    variant = "page"


class PageLLMSFT(PageLLM):
    """Table 1 / Appendix G "w/o Reward": the fine-tuned model, no reward model, no PPO."""

    variant = "none"


class _HistoryLookup:
    """The B.2 prompt of a user's history items, rendered exactly as `pagellm.data.history_prompt`
    (chronological by timestamp then item, the last `max_history`, ratings when shown and known),
    but from the harness's history rows and a sorted key table instead of a scan per user."""

    def __init__(self, split) -> None:
        from bench.data.sequences import KnownInteractions

        self.known = KnownInteractions(split)

    def prompt(self, user: int, items: list[int], data_config) -> str:
        from bench.data.sequences import time_order
        from pagellm import prompts

        items_arr = np.asarray(sorted(items), dtype=np.int64)
        _, times, ratings = self.known.lookup(user, items_arr)
        order = time_order(np.zeros(len(items_arr)), items_arr, times)[-data_config.max_history:]
        chosen, shown = items_arr[order].tolist(), ratings[order]
        with_ratings = data_config.prompt_ratings and not np.isnan(shown).any()
        return prompts.finetune_prompt(user, chosen, shown.tolist() if with_ratings else None)
