"""The model contract and the models registry.

A model is one class with a frozen config dataclass ``Config`` (defaults from its paper):

    model = Model()
    model.fit(split, config, workdir)      # train on split.train; split.valid for early stopping
    model.score(users, history)            # (len(users), n_items) scores, higher = better
  or, for models that produce lists rather than scores (LLMs):
    model.rank(users, k, history)          # (len(users), >= k) item indices, best first, -1 = empty

``history`` is the (len(users), n_items) CSR matrix of what each user is known to have
interacted with before the scored part (train when scoring valid, train + valid when
scoring test). A model may use it as input; it never sees the scored part. The harness,
not the model, removes history items before taking the top-K (`bench.scoring.top_k`), so
every model is masked the same way. Models validate during `fit` with `bench.scoring.validate`.

Adding a model = one file + one line below + (optionally) bench/configs/models/<name>.yaml
(``settings="other"`` makes a variant read another model's YAML and preset settings).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.registry import Registry


@dataclass(frozen=True)
class ModelConfig:
    seed: int = field(default=0, metadata={"help": "random seed of initialisation and sampling"})


class Model:
    Config: type[ModelConfig] = ModelConfig
    # Raised when a change of the code changes this model's results under the same settings;
    # part of the result cache key when non-zero, so result files of the old code are recomputed.
    result_version: int = 0

    def fit(self, split, config: ModelConfig, workdir: Path) -> None:
        raise NotImplementedError

    def score(self, users: np.ndarray, history) -> np.ndarray:
        raise NotImplementedError

    def rank(self, users: np.ndarray, k: int, history) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def check(cls, config: ModelConfig, name: str) -> None:
        """Raise BenchError when `config` cannot run on this machine for a reason known before
        training (e.g. weights neither on disk nor reachable). The runner calls it once per model
        of a run, before the grid, so the user hears it in a second and once; `name` is the
        model's name in the run (the NAME of the fix's ``--set NAME.key=value``)."""

    @classmethod
    def job_config(cls, config: ModelConfig, dataset: str, datasets: tuple[str, ...]) -> ModelConfig:
        """The config of this model's job on `dataset`, in a preset whose datasets are `datasets`
        (the preset's list, not what --datasets narrows a run to, so a job's result never depends
        on which other jobs ran with it). The runner calls it once per job; by default `config`.
        UniSRec fills in the datasets it pre-trains on here, so they are part of the config hash."""
        return config

    @property
    def produces_lists(self) -> bool:
        return type(self).rank is not Model.rank and type(self).score is Model.score

    def extra_result(self) -> dict:
        """Model-specific fields stored in the result JSON (losses, warnings, costs)."""
        return {}


def _recbole_by_name(name: str):
    """"recbole:NARM" -> RecBole's NARM through the same adapter as the registered ones."""
    from bench.registry import Entry

    if not name.startswith("recbole:") or not name[len("recbole:"):].isidentifier():
        return None
    return Entry(name, "baselines.recbole_adapter:recbole_model", {"family": "recbole", "gpu": True},
                 args=(name[len("recbole:"):],))


MODELS: Registry[type[Model]] = Registry("model", dynamic=_recbole_by_name)
# name, "module:Class", family, needs_gpu; measured seconds per job: bench/configs/costs.yaml (bench.costs)
MODELS.register("random", "baselines.popularity:RandomModel", family="sanity", gpu=False)
MODELS.register("pop", "baselines.popularity:PopModel", family="sanity", gpu=False)
MODELS.register("itemknn", "baselines.itemknn:ItemKNN", family="sanity", gpu=False)
MODELS.register("ease", "baselines.ease:EASE", family="sanity", gpu=False)
MODELS.register("multivae", "baselines.recbole_adapter:MultiVAE", family="recbole-general", gpu=False)
MODELS.register("lightgcn", "baselines.recbole_adapter:LightGCN", family="recbole-general", gpu=True)
MODELS.register("bert4rec", "baselines.recbole_adapter:BERT4Rec", family="recbole-sequential", gpu=True)
MODELS.register("s3rec", "baselines.recbole_adapter:S3Rec", family="recbole-sequential", gpu=True)
MODELS.register("fdsa", "baselines.recbole_adapter:FDSA", family="recbole-sequential", gpu=True)
MODELS.register("sasrec", "baselines.recbole_adapter:SASRec", family="recbole-sequential", gpu=True)
MODELS.register("gru4rec", "baselines.recbole_adapter:GRU4Rec", family="recbole-sequential", gpu=True)
MODELS.register("md-cvae", "baselines.mdcvae:MDCVAE", family="hybrid", gpu=True)
MODELS.register("hstu", "baselines.hstu:HSTU", family="sequential", gpu=True)
# UniSRec pre-trained on the preset's other datasets (the paper's), and without pre-training
MODELS.register("unisrec", "baselines.unisrec:UniSRec", family="sequential-text", gpu=True)
MODELS.register("unisrec-scratch", "baselines.unisrec:UniSRecScratch", family="sequential-text", gpu=True,
                settings="unisrec")
MODELS.register("recmind", "baselines.recmind:RecMind", family="llm-agent", gpu=True)
# PageLLM and its ablations (Table 1, Appendix G) read bench/configs/models/pagellm.yaml
MODELS.register("pagellm", "pagellm.model:PageLLM", family="pagellm", gpu=True)
MODELS.register("pagellm-item", "pagellm.model:PageLLMItem", family="pagellm", gpu=True, settings="pagellm")
MODELS.register("pagellm-page", "pagellm.model:PageLLMPage", family="pagellm", gpu=True, settings="pagellm")
MODELS.register("pagellm-sft", "pagellm.model:PageLLMSFT", family="pagellm", gpu=True, settings="pagellm")

