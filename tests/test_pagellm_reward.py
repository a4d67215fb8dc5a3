"""PageLLM's reward stage: pairs at rollout length, reward models that learn the pairs the pipeline
builds, PPO that moves the greedy page toward what the reward prefers, and variants that differ.

All on the `tiny` backbone (a random 2-layer GPT-2) and `synthetic` (300 users: synthetic-tiny's
120 leave about ten held-out users, too few for an accuracy to mean anything).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bench.data.datasets import ensure_split  # noqa: E402
from bench.data.splits import SplitSpec  # noqa: E402
from pagellm.data import PreferencePair  # noqa: E402
from pagellm.model import PageLLM, PageLLMConfig, PageLLMItem, PageLLMPage, PageLLMSFT  # noqa: E402
from pagellm.pairs import NO_LABEL, extend_pair, on_policy_pairs, rollout_length_pairs  # noqa: E402
from pagellm.ppo import AdaptiveKLController, PPOSettings, PPOTrainer, jaccard_at  # noqa: E402
from pagellm.reward import ListReward, RewardModels, new_reward_model, train_reward_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py

# The `cpu` settings of pagellm.yaml (the reward-cpu preset's), with one PPO epoch less: `synthetic` in about a minute.
SETTINGS = dict(backbone="tiny", device="cpu", max_prompt_tokens=128, data_max_history=20, data_max_review_words=30,
                pretrain_epochs=1, pretrain_batch_size=64, pretrain_lr=3e-3, finetune_epochs=6,
                finetune_batch_size=32, finetune_lr=3e-3, patience=2, rm_epochs=6, rm_batch_size=32, rm_lr=1e-3,
                ppo_epochs=3, ppo_batch_size=64, ppo_mini_batch_size=32, ppo_inner_epochs=2, ppo_list_len=20,
                ppo_lr=1e-4, temperature=0.5, kl_target=6.0, kl_horizon=1000, rank_batch_size=128)


@pytest.fixture(scope="module")
def tiny_split(workspace):
    return ensure_split("synthetic", workspace, SplitSpec())


def _workdir(workspace, split, model: str):
    return workspace.root / "work" / "reward-test" / split.dataset / split.name / model / "seed0"


@pytest.fixture(scope="module")
def variants(workspace, tiny_split):
    """The four variants fitted on synthetic (shared stages computed once): name -> model."""
    out = {}
    for cls in (PageLLMSFT, PageLLM, PageLLMPage, PageLLMItem):
        model = cls()
        model.fit(tiny_split, PageLLMConfig(**SETTINGS), _workdir(workspace, tiny_split, f"pagellm-{model.variant}"))
        out[model.variant] = model
    return out


# --- pairs at rollout length ---------------------------------------------------------------------

def test_edit_pairs_are_completed_by_one_shared_greedy_tail():
    pair = PreferencePair(3, "preference", [5, 6, 7], [5, 9, 7], [1, 1, 1], [1, 0, 1], "negatives")
    greedy = [6, 1, 9, 2, 3, 4, 8]
    out = extend_pair(pair, greedy, 6)
    # The tail skips every item of either list, so both lists stay free of repeats.
    assert out.chosen == [5, 6, 7, 1, 2, 3] and out.rejected == [5, 9, 7, 1, 2, 3]
    assert out.chosen_labels == [1, 1, 1, NO_LABEL, NO_LABEL, NO_LABEL]
    assert out.rejected_labels == [1, 0, 1, NO_LABEL, NO_LABEL, NO_LABEL]
    assert (out.user, out.kind, out.source) == (3, "preference", "negatives")


def test_on_policy_pairs_put_the_golden_page_against_the_policy_lists():
    pairs = on_policy_pairs(2, [7, 4], greedy=[1, 7, 2, 3], sampled=[3, 1, 4, 2], length=4)
    assert [p.kind for p in pairs] == ["on-policy-greedy", "on-policy-sampled"]
    for p in pairs:
        assert p.chosen == [7, 4, 1, 2] and len(p.rejected) == 4
        assert p.chosen_labels == [1, 1, NO_LABEL, NO_LABEL]
    assert pairs[0].rejected_labels == [0, 0, NO_LABEL, NO_LABEL]
    # A policy whose greedy page already is the golden page gives no greedy pair.
    same = on_policy_pairs(2, [7, 4], greedy=[7, 4, 1, 2], sampled=[1, 2, 7, 4], length=4)
    assert [p.kind for p in same] == ["on-policy-sampled"]
    # Held-out users are kept apart: on-policy pairs only for the users asked for.
    built = rollout_length_pairs([], {2: [7, 4], 5: [1]}, {2: [1, 7, 2, 3], 5: [2, 3]}, {}, 4, users=[5])
    assert {p.user for p in built} == {5}


def test_unlabelled_positions_carry_no_token_loss():
    from pagellm.backbones import load_backbone

    texts = [f"<u_{u}> is shown a page:" for u in range(4)]
    backbone = load_backbone("tiny", 4, 10, torch.device("cpu"), texts=texts, seed=0)
    prompts = dict(enumerate(backbone.encode(texts)))
    pair = PreferencePair(0, "ranked", [1, 2, 3], [2, 1, 3], [1, NO_LABEL, NO_LABEL], [0, NO_LABEL, NO_LABEL])
    losses = []
    for labels in ([1, NO_LABEL, NO_LABEL], [1, 1, 1]):
        rm = new_reward_model(load_backbone("tiny", 4, 10, torch.device("cpu"), texts=texts, seed=0), "item")
        pair.chosen_labels = labels
        log = train_reward_model(rm, [pair], prompts, epochs=1, batch_size=1, lr=0.0, token_weight=1.0,
                                 generator=torch.Generator().manual_seed(0))
        losses.append(log.epochs[0]["bt_loss"])
    # Same weights (lr 0): the loss differs only through the labels that count.
    assert losses[0] != pytest.approx(losses[1])
    assert np.isfinite(losses).all()


# --- the pipeline's reward models learn -----------------------------------------------------------

def test_reward_models_reach_70_percent_on_the_pipelines_held_out_pairs(variants):
    accuracy = variants["mixed"].reward_accuracy
    assert set(accuracy) == {"page", "item", "mixed"}
    for kind in ("page", "mixed"):
        assert accuracy[kind]["all"] >= 0.7, accuracy
        assert accuracy[kind]["n"] > 0
    families = set(accuracy["page"]) - {"all", "n"}
    assert {"on-policy-greedy", "on-policy-sampled", "preference"} <= families
    stages = variants["mixed"].extra_result()["stages"]
    # Pairs at the rollout length, and at least as many as the data module built.
    assert stages["reward-page"]["n_pairs"] >= sum(stages["reward-page"]["n_pairs_by_family"].values()) > 0


# --- PPO ----------------------------------------------------------------------------------------

def test_ppo_against_a_planted_reward_moves_the_greedy_page_to_the_planted_items(variants, workspace, tiny_split):
    """A reward of 1 per item of a fixed subset (the planted preference): after a few PPO updates
    the fine-tuned policy's greedy top-20 holds clearly more of that subset."""
    from pagellm.backbones import load_checkpoint
    from pagellm.model import shared_dir

    model = variants["none"]
    shared = shared_dir(_workdir(workspace, tiny_split, "pagellm-none"))
    finetuned = [p.parent for p in shared.glob("finetune-*/stage.json")]
    assert len(finetuned) == 1
    policy = load_checkpoint(finetuned[0], torch.device("cpu"))
    data = model.data
    users = sorted(u for u in data.finetune_prompts if u in data.label_lists)
    prompts = policy.encode([data.finetune_prompts[u] for u in users], 96, reserve=20)
    banned = [list(data.input_items.get(u, [])) for u in users]
    n_items = tiny_split.n_items
    planted = torch.zeros(n_items, dtype=torch.bool)
    planted[torch.randperm(n_items, generator=torch.Generator().manual_seed(3))[: n_items // 4]] = True

    def planted_reward(_prompts, items):
        return ((items >= 0) & planted[items.clamp(min=0)]).float(), {}

    settings = PPOSettings(epochs=3, batch_size=32, mini_batch_size=16, inner_epochs=2, list_len=20, lr=3e-3,
                           kl_coef=0.01, temperature=1.0)
    trainer = PPOTrainer(policy, planted_reward, settings, seed=0)

    def planted_share() -> float:
        lists = trainer.greedy_lists(prompts, banned)
        return float(planted[lists.clamp(min=0)].float().mean())

    before = planted_share()
    trainer.train(prompts, banned, monitor=(prompts[:16], banned[:16]))
    after = planted_share()
    assert after > before + 0.2, (before, after)
    curve = trainer.curve
    assert [row["epoch"] for row in curve] == [0, 1, 2, 3]
    assert curve[-1]["reward_greedy"] > curve[0]["reward_greedy"] == curve[-1]["reward_greedy_sft"]
    assert curve[-1]["jaccard20_sft"] < 1.0 and curve[0]["jaccard20_sft"] == 1.0


def test_variants_trained_with_different_rewards_produce_different_lists(variants, tiny_split):
    users = np.unique(tiny_split.test["user"].to_numpy())
    history = tiny_split.history("test")[users]
    lists = {v: m.rank(users, 20, history) for v, m in variants.items()}
    for a in ("mixed", "page", "item"):
        assert not np.array_equal(lists[a], lists["none"]), a
        curve = variants[a].extra_result()["ppo_curve"]
        assert len(curve) == SETTINGS["ppo_epochs"] + 1
        assert curve[-1]["reward_greedy"] > curve[-1]["reward_greedy_sft"], (a, curve[-1])
    assert not np.array_equal(lists["page"], lists["item"])
    assert variants["none"].extra_result().get("ppo_curve") is None


# --- small contracts ------------------------------------------------------------------------------

def test_adaptive_kl_coefficient_follows_the_target():
    fixed = AdaptiveKLController(0.1, 0.0, 100)
    fixed.update(50.0, 10)
    assert fixed.value == 0.1
    kl = AdaptiveKLController(0.1, 2.0, 100)
    kl.update(10.0, 10)  # far above target: +20% x 10/100
    assert kl.value == pytest.approx(0.1 * 1.02)
    kl.update(0.0, 10)  # far below: -20% x 10/100
    assert kl.value == pytest.approx(0.1 * 1.02 * 0.98)


def test_jaccard_at_k_ignores_padding():
    a = np.array([[1, 2, 3, -1], [4, 5, 6, 7]])
    b = np.array([[3, 2, 1, -1], [4, 5, 8, 9]])
    assert jaccard_at(a, b, 20).tolist() == pytest.approx([1.0, 2 / 6])
    assert jaccard_at(a, b, 1).tolist() == pytest.approx([0.0, 1.0])


def test_monitoring_scores_do_not_move_the_reward_normalisation():
    from pagellm.backbones import load_backbone

    texts = [f"<u_{u}> page:" for u in range(3)]
    cpu = torch.device("cpu")
    models = RewardModels(page=new_reward_model(load_backbone("tiny", 3, 12, cpu, texts=texts, seed=0), "page").eval(),
                          item=new_reward_model(load_backbone("tiny", 3, 12, cpu, texts=texts, seed=1), "item",
                                                logprob=True).eval())
    reward = ListReward(models, "mixed", 0.5, True)
    prompts = models.page.backbone.encode(texts)
    items = torch.tensor([[1, 2, 3], [4, 5, -1], [6, 7, 8]])
    raw = reward.sequence_score(prompts, items)
    assert reward.page_moments.n == 0 and reward.item_moments.n == 0
    scores = models.scores(prompts, items, 0.5)
    assert torch.allclose(raw, scores["mixed"])
    reward(prompts, items)
    assert reward.page_moments.n == 3


def test_the_run_log_warns_about_a_reward_model_near_chance(caplog):
    from types import SimpleNamespace

    model = PageLLM()
    model.config = PageLLMConfig(backbone="tiny")
    model.split = SimpleNamespace(dataset="toy")
    model.reward_accuracy = {"page": {"all": 0.55, "n": 40}, "item": {"all": 0.81, "n": 40}, "mixed": None}
    with caplog.at_level("WARNING", logger="pagellm.model"):
        model._warn_weak_rewards()
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "page reward model" in warned[0] and "0.550" in warned[0], warned
