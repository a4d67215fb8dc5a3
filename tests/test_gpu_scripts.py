"""The measurement scripts of docs/performance.md that are about GPUs and catalogue size:
scripts/gpu_check.py runs end to end on a CPU (`--quick`) and writes its table; the vocabulary
cost extrapolation of scripts/pagellm_vocab_cost.py follows its stated formulas."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, check=False)


def test_gpu_check_runs_every_part_on_a_cpu_and_writes_its_table(tmp_path):
    out = tmp_path / "gpu"
    done = _run(["scripts/gpu_check.py", "--out", str(out), "--root", str(tmp_path / "ws"), "--device", "cpu",
                 "--quick"])
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "gpu_check.json").read_text())
    assert list(results["parts"]) == ["pagellm-epoch", "pagellm-vocab", "sasrec", "lightgcn"]
    assert not [p for p, r in results["parts"].items() if "failed" in r or "skipped" in r]
    epoch = results["parts"]["pagellm-epoch"]["finetune"]
    assert epoch["steps"] == epoch["steps_per_epoch"] and not epoch["projected"]
    assert len(results["parts"]["sasrec"]["epochs"]) == 2 and len(results["parts"]["lightgcn"]["epochs"]) == 2
    table = (out / "gpu_check.md").read_text()
    for part in results["parts"]:
        assert f"| {part} |" in table


def test_gpu_check_refuses_cuda_without_a_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = _run(["scripts/gpu_check.py", "--out", str(tmp_path)], timeout=120)
    assert done.returncode == 2 and "no CUDA device" in done.stderr


def test_gpu_check_defaults_to_the_largest_prepared_dataset(tmp_path):
    gpu_check = _script("gpu_check")
    assert gpu_check.largest_prepared(tmp_path) is None
    for name, n in (("small", 10), ("large", 1000), ("medium", 100)):
        (tmp_path / "data" / "processed" / name).mkdir(parents=True)
        (tmp_path / "data" / "processed" / name / "manifest.json").write_text(json.dumps({"n_interactions": n}))
    assert gpu_check.largest_prepared(tmp_path) == "large"


def _row(n: int) -> dict:
    """A measured row of pagellm_vocab_cost at n items and n users, made linear by hand."""
    vocab = 2003 + 2 * n
    trunk = 85_000_000
    return {"n_items": n, "n_users": n, "vocab": vocab, "words": 2003, "params_total": trunk + 768 * vocab,
            "params_embedding": 768 * vocab, "bytes_embedding": 4 * 768 * vocab, "adamw_bytes_embedding": 8 * 768 * vocab,
            "grad_bytes": 4 * (trunk + 768 * vocab), "prompt_tokens": 32.0, "step_long_prompt_tokens": 158.0,
            "step_peak_bytes": 4 * (trunk + 768 * vocab) + 16 * 52 * 2**20 + 8 * 4 * 320 * n,
            "step_long_peak_bytes": 4 * (trunk + 768 * vocab) + 16 * 178 * 2**20 + 8 * 4 * 320 * n,
            "finetune_logits_elements": 320 * n, "finetune_logits_peak_bytes": 8 * 4 * 320 * n,
            "decode_logits_elements": 64 * n, "decode_logits_peak_bytes": 2 * 4 * 64 * n,
            "pretrain_vocab": 50_257 + 2 * n, "pretrain_logits_elements": 2048 * (50_257 + 2 * n),
            "pretrain_whole_peak_bytes": 3 * 4 * 2048 * (50_257 + 2 * n), "pretrain_chunked_peak_bytes": 2**28,
            "step_forward_backward_seconds": 10.0, "step_optimizer_seconds": 1e-5 * vocab,
            "decode_seconds_per_user": 2.0 + 1e-5 * n, "decode_head_seconds_per_user": 1e-5 * n,
            "load_seconds": 5 + 1e-4 * n, "encode_seconds_per_prompt": 1e-4}


def test_vocab_cost_extrapolation_follows_its_formulas():
    cost = _script("pagellm_vocab_cost")
    ext = cost.extrapolate([_row(n) for n in (5000, 20000, 50000)], users=332_000, items=104_000)
    vocab = 50_257 + 332_000 + 104_000
    assert ext["vocab"] == vocab and ext["params"] == 85_000_000 + 768 * vocab
    assert ext["embedding_bytes"] == 4 * 768 * vocab and ext["states_bytes"] == 16 * ext["params"]
    assert ext["finetune_logits_copies"] == pytest.approx(8) and ext["pretrain_logits_copies"] == pytest.approx(3)
    assert ext["decode_cpu_seconds_per_user"] == pytest.approx(2.0 + 1e-5 * 104_000)
    # 1 MiB per token of a row (no square term in these rows), 16 rows of 532 tokens.
    act = ext["activations_per_row"]
    assert act["c1_bytes_per_token"] == pytest.approx(2**20) and act["c2_bytes_per_token2"] == pytest.approx(0, abs=1e-3)
    longest = ext["budget_gib"]["fine-tuning, B=16, 532-token rows (max_prompt_tokens 512 + 20)"]["without_square"]
    expected = 16 * ext["params"] + max(16 * 532 * 2**20 + 8 * 4 * 320 * 104_000, 4 * ext["params"])
    assert longest == pytest.approx(expected / 2**30)
    assert all(fit["max_rel_residual"] < 1e-6 for name, fit in ext["fits_linear"].items()
               if name not in ("encode_seconds_vs_tokens",))
    assert "EXTRAPOLATION (not measured)" in cost.report([_row(5000)] * 3, ext, type("A", (), {
        "users_per_item": 1.0, "history": 8})())


@pytest.mark.slow
def test_vocab_cost_script_measures_two_small_sizes(tmp_path):
    done = _run(["scripts/pagellm_vocab_cost.py", "--out", str(tmp_path), "--items", "300,600", "--timed-users", "2"],
                timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "vocab_cost.json").read_text())["measured"]
    assert [r["n_items"] for r in rows] == [300, 600] and rows[0]["tied"]
    assert rows[1]["params_embedding"] - rows[0]["params_embedding"] == 768 * 600  # 300 more items and users
    assert "EXTRAPOLATION (not measured)" in (tmp_path / "vocab_cost.md").read_text()
