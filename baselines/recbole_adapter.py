"""One adapter for every RecBole model (RecBole 1.2.1's lower-level API, never quick_start).

Each model trains on the exported split files (`bench.data.recbole_export`): general models on
``<ds>.{train,valid,test}.inter``, sequential ones on the pre-augmented ``<ds>-seq`` files with
``alias_of_item_id``. Early stopping uses OUR evaluator on the validation split (ndcg@20 by
default, the same history masking as the final scoring) instead of RecBole's, so every model in
this project is selected the same way (of equal scores the first is best, as in
`bench.training.EarlyStopping`, where RecBole alone would keep the last); the best state is kept
in memory and restored after training (no reload of RecBole's pickled checkpoints, which
torch >= 2.6 refuses by default).
S3Rec runs its self-supervised pre-training stage, then fine-tunes from it. Scores come from
RecBole's ``full_sort_predict``; the harness masks the history and cuts the top-K.

Registered: multivae, lightgcn, bert4rec, s3rec, fdsa, sasrec, gru4rec; any other RecBole model
runs as ``recbole:<ModelName>`` (e.g. ``recbole:NARM``) with RecBole's own defaults.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench import progress
from bench.models import Model, ModelConfig
from bench.scoring import validate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecBoleConfig(ModelConfig):
    epochs: int = field(default=300, metadata={"help": "maximum training epochs"})
    stopping_step: int = field(default=10, metadata={"help": "epochs without validation gain before stopping"})
    eval_step: int = field(default=1, metadata={"help": "validate every this many epochs"})
    valid_metric: str = field(default="ndcg@20", metadata={"help": "our evaluator's metric for early stopping"})
    train_batch_size: int = field(default=2048, metadata={"help": "RecBole train_batch_size"})
    eval_batch_size: int = field(default=4096, metadata={"help": "users per scoring batch"})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    max_len: int = field(default=50, metadata={"help": "MAX_ITEM_LIST_LENGTH of sequential models"})
    pretrain_epochs: int = field(default=0, metadata={"help": "S3Rec only: self-supervised pre-training epochs (>= 1)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    params: dict = field(default_factory=dict, metadata={"help": "any other RecBole setting, e.g. {n_layers: 2}"})

    def __post_init__(self) -> None:
        from bench.recbole_compat import check_plain

        check_plain(self.params)  # plain data only: RecBole eval()s strings (bench.recbole_compat)


class RecBoleModel(Model):
    """A RecBole model behind the project's contract. Subclasses set `recbole_name`."""

    Config = RecBoleConfig
    recbole_name: str = ""

    def fit(self, split, config: RecBoleConfig, workdir: Path) -> None:
        from bench.recbole_compat import recbole_job

        # RecBole's files go under `workdir` and its process-wide changes are undone (bench.recbole_compat).
        with recbole_job(Path(workdir)):
            self._fit(split, config, workdir)

    def _fit(self, split, config: RecBoleConfig, workdir: Path) -> None:
        import torch
        from recbole.data import create_dataset, data_preparation
        from recbole.utils import get_trainer, init_seed

        from bench.data.recbole_export import export_recbole
        from bench.recbole_compat import check_params, make_config, quiet_recbole

        check_params(self.recbole_name, config.params)
        self.split = split
        self.workdir = Path(workdir)
        views = export_recbole(split, max_len=config.max_len)
        model_class = _recbole_class(self.recbole_name)
        self.sequential = _is_sequential(model_class)
        use_gpu = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
        values = {
            "benchmark_filename": ["train", "valid", "test"],
            "eval_args": {"order": "TO", "group_by": "user", "mode": "full"},
            "metrics": ["Recall", "NDCG"], "topk": [20], "valid_metric": "NDCG@20",
            "epochs": config.epochs, "stopping_step": config.stopping_step, "eval_step": config.eval_step,
            "train_batch_size": config.train_batch_size, "eval_batch_size": config.eval_batch_size,
            "learning_rate": config.learning_rate, "seed": config.seed, "reproducibility": True,
            "use_gpu": use_gpu, "gpu_id": "0" if use_gpu else "",
        }
        if self.sequential:
            dataset_name = views["sequential"]
            values.update({"load_col": {"inter": ["user_id", "item_id_list", "item_id"],
                                        "item": ["item_id", "brand", "categories"]},
                           "alias_of_item_id": ["item_id_list"], "MAX_ITEM_LIST_LENGTH": config.max_len})
        else:
            dataset_name = views["general"]
            values.update({"load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"],
                                        "item": ["item_id", "brand", "categories"]}})
        values.update(_model_defaults(self.recbole_name, self.sequential))
        values.update(config.params)
        if self.recbole_name == "S3Rec":
            values["pretrain_epochs"] = config.pretrain_epochs
        self.rb_config = make_config(self.recbole_name, dataset_name, views["data_path"], values, self.workdir)
        init_seed(config.seed, True)
        with quiet_recbole():
            dataset = create_dataset(self.rb_config)
            train_data, valid_data, test_data = data_preparation(self.rb_config, dataset)
        self.dataset = dataset
        self.dataloaders = {"train": train_data, "valid": valid_data, "test": test_data}  # for cross-checks
        self._index_maps(dataset)
        self.info: dict = {"recbole_model": self.recbole_name, "sequential": self.sequential}

        if self.recbole_name == "S3Rec":
            if split.item_categories is None:
                from bench.errors import NotApplicable

                raise NotApplicable(f"s3rec pre-trains by predicting item attributes (categories); "
                                    f"{split.dataset} has none")
            if config.pretrain_epochs < 1:
                from bench.errors import ConfigError

                raise ConfigError("s3rec needs pretrain_epochs >= 1 (its fine-tuning starts from the pre-trained model)")
            self.rb_config["train_stage"] = "pretrain"
            self.rb_config["pre_model_path"] = str(self._pretrain_s3rec(train_data, config))

        init_seed(config.seed, True)
        with quiet_recbole():
            self.model = model_class(self.rb_config, train_data.dataset).to(self.rb_config["device"])
            trainer_class = _select_trainer(get_trainer(self.rb_config["MODEL_TYPE"], self.recbole_name))
            trainer = trainer_class(self.rb_config, self.model, self, split, config.valid_metric)
            trainer.fit(train_data, valid_data, verbose=False, saved=True, show_progress=False)
        self.timings = trainer.timings
        if trainer.best_state is not None:
            self.model.load_state_dict(trainer.best_state)
        self.model.eval()
        self.info.update({"best_valid": trainer.best_value, "valid_metric": config.valid_metric,
                          "best_epoch": trainer.best_epoch, "epochs_run": trainer.epochs_run,
                          "train_loss_last": trainer.last_loss,
                          "train_seconds_per_epoch": _mean_wall(trainer.timings["train"]),
                          "valid_seconds_per_validation": _mean_wall(trainer.timings["valid"]),
                          "n_parameters": int(sum(p.numel() for p in self.model.parameters()))})

    def _pretrain_s3rec(self, train_data, config: RecBoleConfig) -> Path:
        """S3Rec's self-supervised stage; returns a weights-only checkpoint for fine-tuning."""
        import torch
        from recbole.trainer import PretrainTrainer

        from bench.recbole_compat import quiet_recbole

        model_class = _recbole_class("S3Rec")
        self.rb_config["save_step"] = config.pretrain_epochs
        with quiet_recbole():
            model = model_class(self.rb_config, train_data.dataset).to(self.rb_config["device"])
            trainer = PretrainTrainer(self.rb_config, model)
            trainer.pretrain(train_data, verbose=False, show_progress=False)
        path = self.workdir / "s3rec-pretrained.pth"
        # Tensors only, so the fine-tuning stage's plain torch.load (weights_only) accepts it.
        torch.save({"state_dict": model.state_dict()}, path)
        self.rb_config["train_stage"] = "finetune"
        self.info["pretrain_epochs"] = config.pretrain_epochs
        return path

    def _index_maps(self, dataset) -> None:
        # Our indices -> RecBole's internal ids (RecBole re-maps tokens; 0 is its padding id).
        self.rb_user = np.asarray(dataset.token2id("user_id", list(self.split.user_ids)), dtype=np.int64)
        self.rb_item = np.asarray(dataset.token2id("item_id", list(self.split.item_ids)), dtype=np.int64)

    def score(self, users: np.ndarray, history) -> np.ndarray:
        import torch
        from recbole.data.interaction import Interaction

        from bench.data.sequences import padded_histories

        device = self.rb_config["device"]
        fields = {"user_id": torch.as_tensor(self.rb_user[np.asarray(users)], device=device)}
        if self.sequential:
            seqs = padded_histories(self.split, np.asarray(users), history, self.rb_config["MAX_ITEM_LIST_LENGTH"])
            lengths = (seqs >= 0).sum(axis=1)
            left = np.zeros_like(seqs)  # RecBole wants sequences left-aligned, padded with 0
            rows, cols = np.nonzero(seqs >= 0)
            shift = seqs.shape[1] - lengths
            left[rows, cols - shift[rows]] = self.rb_item[seqs[rows, cols]]
            fields["item_id_list"] = torch.as_tensor(left, device=device)
            fields["item_length"] = torch.as_tensor(np.maximum(lengths, 1), device=device)
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad(), self._folded_in(users, history):
            scores = self.model.full_sort_predict(Interaction(fields).to(device))
        if was_training:
            self.model.train()
        scores = scores.view(len(users), -1).float().cpu().numpy()
        return scores[:, self.rb_item]

    @contextlib.contextmanager
    def _folded_in(self, users: np.ndarray, history):
        """While scoring, an auto-encoder (Multi-VAE, Multi-DAE, RecVAE, ...) encodes `history`.

        RecBole's auto-encoders read a user's input row from the interaction matrix of the
        dataset they were built with (`AutoEncoderMixin.get_rating_matrix`): the training
        split. Scoring test users from it would drop their valid items, which every other
        model of the harness reads. So the row is the harness's `history` (binary, as RecBole
        builds it), in RecBole's item ids, for this one call; other models are left as they
        are (sequential ones get `history` as their input sequence; LightGCN and other
        embedding models have a trained vector per user and cannot fold in new history).
        """
        from recbole.model.abstract_recommender import AutoEncoderMixin

        if not isinstance(self.model, AutoEncoderMixin):
            yield
            return
        import torch

        rows, cols = history.nonzero()
        matrix = torch.zeros(len(users), self.model.n_items, device=self.rb_config["device"])
        matrix[torch.as_tensor(rows), torch.as_tensor(self.rb_item[cols])] = 1.0
        self.model.get_rating_matrix = lambda user: matrix  # an instance attribute shadows the method
        try:
            yield
        finally:
            del self.model.get_rating_matrix

    def extra_result(self) -> dict:
        return dict(self.info)


def _select_trainer(base):
    """RecBole's trainer for the model, validating with our evaluator and keeping the best state."""

    class ValidatedTrainer(base):
        def __init__(self, config, model, adapter: RecBoleModel, split, metric: str):
            super().__init__(config, model)
            self.adapter, self.split, self.metric = adapter, split, metric
            self.best_state, self.best_value, self.best_epoch = None, float("-inf"), -1
            self.epochs_run, self.last_loss = 0, None
            self._last_value = float("-inf")
            # (wall, CPU) seconds of each training epoch and each validation (docs/performance.md)
            self.timings: dict[str, list[tuple[float, float]]] = {"train": [], "valid": []}

        def fit(self, train_data, valid_data=None, *args, **kwargs):
            # One bar of epochs with the loss and our validation metric (RecBole's own, per batch, stay off).
            self.bar = progress.bar(total=self.epochs, desc=self.adapter.recbole_name.lower(), unit="epoch")
            try:
                return super().fit(train_data, valid_data, *args, **kwargs)
            finally:
                self.bar.close()

        def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
            start = (time.perf_counter(), time.process_time())
            loss = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
            self.timings["train"].append((time.perf_counter() - start[0], time.process_time() - start[1]))
            self.epochs_run = epoch_idx + 1
            self.last_loss = float(sum(loss) if isinstance(loss, tuple) else loss)
            self.bar.update()
            progress.note(loss=self.last_loss)
            return loss

        def _valid_epoch(self, valid_data, show_progress=False):
            start = (time.perf_counter(), time.process_time())
            value = validate(self.adapter, self.split, self.metric)
            self.timings["valid"].append((time.perf_counter() - start[0], time.process_time() - start[1]))
            self._last_value = value
            # RecBole's early_stopping counts a tie as an improvement (`value >= best`: it keeps
            # the LAST of equal scores and restarts its patience). Every other model here keeps
            # the FIRST (`bench.training.EarlyStopping`, strictly greater). A tie is reported to
            # RecBole as just below the best, so it neither saves it nor restarts the patience.
            reported = float(np.nextafter(value, -np.inf)) if value == self.best_value else value
            progress.note(**{self.metric: value, "best": max(value, self.best_value)})
            return reported, {self.metric: value}

        def _save_checkpoint(self, epoch, verbose=True, **kwargs):
            # Called by RecBole exactly when the best score improved (strictly, see above): the
            # weights kept, the best epoch and the best score are recorded together, so they
            # always describe the same epoch.
            self.best_state = copy.deepcopy(self.model.state_dict())
            self.best_epoch, self.best_value = epoch, self._last_value

    return ValidatedTrainer


def _mean_wall(timings: list[tuple[float, float]]) -> float | None:
    return round(float(np.mean([wall for wall, _ in timings])), 3) if timings else None


def _recbole_class(name: str):
    from recbole.utils import get_model

    from bench.errors import BenchError

    try:
        return get_model(name)
    except (ValueError, ImportError, AttributeError):
        raise BenchError(f"RecBole has no model named {name!r}; see RecBole's model list "
                         "(names are case-sensitive, e.g. recbole:NARM)") from None


def _is_sequential(model_class) -> bool:
    from recbole.model.abstract_recommender import SequentialRecommender

    return issubclass(model_class, SequentialRecommender)


def _model_defaults(name: str, sequential: bool) -> dict:
    """Settings every run of `name` needs with our files (not hyper-parameters).

    Sequential models train with cross-entropy over all items (RecBole requires no negative
    sampling then); FDSA reads brand and categories; S3Rec pre-trains on categories.
    """
    out: dict = {"train_neg_sample_args": None, "loss_type": "CE"} if sequential else {}
    if name == "FDSA":
        out.update({"selected_features": ["brand", "categories"], "pooling_mode": "mean"})
    if name == "S3Rec":
        out["item_attribute"] = "categories"
    return out


# RecBole 1.2.1's auto-encoders (`AutoEncoderMixin`): they fold in the harness's history since
# result_version 1 (`RecBoleModel._folded_in`); before, they scored test users from train only.
AUTO_ENCODERS = frozenset({"MultiVAE", "MultiDAE", "RecVAE", "MacridVAE", "RaCT", "CDAE", "DiffRec", "LDiffRec"})


def recbole_model(name: str) -> type[RecBoleModel]:
    """The adapter class for RecBole model `name` (used by "recbole:<Name>")."""
    return type(name, (RecBoleModel,), {"recbole_name": name, "__module__": __name__,
                                        "result_version": 1 if name in AUTO_ENCODERS else 0})


MultiVAE = recbole_model("MultiVAE")
LightGCN = recbole_model("LightGCN")
BERT4Rec = recbole_model("BERT4Rec")
S3Rec = recbole_model("S3Rec")
FDSA = recbole_model("FDSA")
SASRec = recbole_model("SASRec")
GRU4Rec = recbole_model("GRU4Rec")
