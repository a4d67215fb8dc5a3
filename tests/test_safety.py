"""Nothing runs that should not, nothing is lost: hostile settings and names, concurrent
runners, interrupted stages and parallel workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import ConfigError


def _hostile(marker) -> str:
    return f"__import__('os').system('touch {marker}')"


# --- RecBole settings never run code ---------------------------------------------------------

def test_hostile_recbole_setting_is_rejected_and_never_run(tmp_path, capsys):
    marker = tmp_path / "pwned"
    setting = f'multivae.params={{mlp_hidden_size: [8], note: "{_hostile(marker)}"}}'
    code = main(["--root", str(tmp_path), "run", "--models", "multivae", "--datasets", "synthetic-tiny",
                 "--preset", "smoke", "--no-progress", "--set", setting])
    err = capsys.readouterr().err
    assert code == 2
    assert "params.note" in err and "not plain text" in err and "Traceback" not in err
    assert not marker.exists()


def test_recbole_config_never_evaluates_a_string(tmp_path):
    pytest.importorskip("recbole")
    from bench.recbole_compat import make_config

    marker = tmp_path / "pwned"
    config = make_config("MultiVAE", "x", str(tmp_path), {
        "note": _hostile(marker), "mlp_hidden_size": "[64]", "dropout_prob": "0.25", "log_wandb": "false",
        "learner": "adam", "valid_metric": "NDCG@20"}, tmp_path)
    assert not marker.exists()
    assert config["note"] == _hostile(marker)  # kept as the string it is
    # RecBole's own conversions of literals still happen
    assert config["mlp_hidden_size"] == [64] and config["dropout_prob"] == 0.25 and config["log_wandb"] is False
    assert config["learner"] == "adam" and config["valid_metric"] == "NDCG@20"


@pytest.mark.parametrize("params, message", [
    ({"latent_dimenson": 8}, "Did you mean latent_dimension"),
    ({"latent_dimension": "big"}, "params.latent_dimension: 'big' is not a number"),
    ({"mlp_hidden_size": 64}, "is not a list"),
    ({"teacher": "eval('1')"}, "not plain text"),
    ({"note": {"inner": ["ok", "os.system('x')"]}}, "params.note.inner"),
])
def test_recbole_params_are_checked_against_recbole_settings(params, message):
    from bench.recbole_compat import check_params

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_params("MultiVAE", params)


def test_shipped_recbole_settings_are_all_known():
    from bench import config as cfg
    from bench.models import MODELS
    from bench.recbole_compat import check_params

    for name in MODELS:
        entry = MODELS.entry(name)
        if not entry.meta.get("family", "").startswith("recbole"):
            continue
        recbole_name = entry.load().recbole_name
        for settings in ("default", "smoke", "paper", "cpu"):
            check_params(recbole_name, cfg.model_yaml(name, settings).get("params") or {})


# --- names read from files never leave the workspace -----------------------------------------

def _user_csv(path):
    rows = [f"u{u},i{(u * 7 + k) % 30},5,{100 + k}" for u in range(40) for k in range(6)]
    path.write_text("user_id,item_id,rating,timestamp\n" + "\n".join(rows) + "\n")
    return path


def test_a_registered_name_is_checked_where_it_is_read(tmp_path, capsys):
    import json

    root = tmp_path / "a" / "b" / "ws"
    (root / "data").mkdir(parents=True)
    registry = root / "data" / "datasets.json"
    registry.write_text(json.dumps({"../../../escaped": {"source": str(_user_csv(tmp_path / "mine.csv"))}}))
    code = main(["--root", str(root), "data", "split", "--dataset", "../../../escaped"])
    err = capsys.readouterr().err
    assert code == 2
    assert str(registry) in err and "'../../../escaped' is not a valid dataset name" in err
    assert "remove that entry" in err and "Traceback" not in err
    assert not [p for p in tmp_path.rglob("*") if "escaped" in p.name]
    assert main(["--root", str(root), "run", "--models", "pop", "--datasets", "all", "--no-progress"]) == 2


def test_workspace_paths_stay_inside_the_workspace(tmp_path):
    from bench.errors import BenchError
    from bench.paths import Workspace

    ws = Workspace(tmp_path)
    for bad in ("..", "../x", "a/b", "", "a\\b"):
        with pytest.raises(BenchError, match="invalid name"):
            ws.split(bad, "random")
        with pytest.raises(BenchError, match="invalid name"):
            ws.raw(bad)
    assert ws.split("mine", "random-s0") == tmp_path / "data" / "splits" / "mine" / "random-s0"


# --- concurrent runners -----------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def _bench(*args, root) -> subprocess.Popen:
    """`bench` in a child process that imports this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "bench.cli", "--root", str(root), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _hold(lock) -> subprocess.Popen:
    """A process holding the file lock `lock` until killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", ("import sys, time; from bench.locks import locked\n"
                                "with locked(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)"), str(lock)],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_concurrent_registrations_all_land(tmp_path):
    import json

    source = _user_csv(tmp_path / "mine.csv")
    names = ["mine-a", "mine-b", "mine-c", "mine-d"]
    procs = [_bench("data", "prepare", "--dataset", name, "--source", str(source), root=tmp_path) for name in names]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert sorted(json.loads((tmp_path / "data" / "datasets.json").read_text())) == names


def test_a_job_held_by_another_runner_is_not_redone(tmp_path, capsys):
    run = ["--root", str(tmp_path), "run", "--models", "pop", "--datasets", "synthetic-tiny", "--preset", "smoke",
           "--no-progress", "--no-table"]
    holder = _hold(tmp_path / "work" / "smoke" / "synthetic-tiny" / "random-s0" / "pop" / "seed0" / ".job.lock")
    try:
        assert main(run) == 0
        out = capsys.readouterr().out
        assert "0 ran, 0 skipped, 0 failed, 1 held by another runner" in out
        assert "held by another runner: smoke/synthetic-tiny/random-s0/pop/seed0" in out
        assert not list((tmp_path / "results").rglob("seed0.json"))
    finally:
        holder.kill()
        holder.wait()
    assert main(run) == 0  # the lock died with its holder
    assert "1 ran" in capsys.readouterr().out


# --- nothing left behind ----------------------------------------------------------------------

def test_a_stage_removes_what_killed_stages_left(tmp_path):
    from pagellm.model import run_stage

    killed = [tmp_path / ".finetune-abc.tmp-4242", tmp_path / ".ppo-old.tmp-17"]  # their writers died
    running = tmp_path / ".pretrain-xyz.tmp-99"  # its writer holds the stage lock
    for folder in (*killed, running):
        (folder / "model").mkdir(parents=True)
    holder = _hold(tmp_path / ".pretrain-xyz.lock")
    try:
        record = run_stage(tmp_path / "finetune-abc", {"k": 1}, lambda out: {"n": 1})
    finally:
        holder.kill()
        holder.wait()
    assert record["n"] == 1 and (tmp_path / "finetune-abc" / "stage.json").exists()
    assert not any(folder.exists() for folder in killed)
    assert running.exists()

    def fails(out):
        (out / "half-written").write_text("x")
        raise RuntimeError("stage failed")

    with pytest.raises(RuntimeError):
        run_stage(tmp_path / "lists-def", {"k": 2}, fails)
    assert not list(tmp_path.glob(".*.tmp-*"))  # its own, and the pretrain one whose writer died since


_SLEEPY = '''"""A model whose fit sleeps; importing this module registers it (also in joblib's workers)."""
import os
import time
from dataclasses import dataclass
from pathlib import Path

from bench.models import MODELS, Model, ModelConfig


@dataclass(frozen=True)
class SleepyConfig(ModelConfig):
    pass


class Sleepy(Model):
    Config = SleepyConfig

    def fit(self, split, config, workdir):
        (Path(workdir) / f"worker-{os.getpid()}").write_text("")
        time.sleep(120)


if "sleepy" not in MODELS:
    MODELS.register("sleepy", "sleepy:Sleepy", family="test")
'''


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to find the workers")
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_killing_a_parallel_run_stops_its_workers(tmp_path, signal_name):
    import signal
    import time

    (tmp_path / "sleepy.py").write_text(_SLEEPY)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    code = "import sys, sleepy; from bench.cli import main; sys.exit(main(sys.argv[1:]))"
    with open(tmp_path / "stderr.txt", "w") as err:  # not a pipe: orphaned workers would hold it open
        parent = subprocess.Popen([sys.executable, "-c", code, "--root", str(tmp_path), "run", "--models", "sleepy",
                                   "--datasets", "synthetic-tiny", "--preset", "smoke", "--seeds", "0,1",
                                   "--jobs", "2", "--no-progress", "--no-table"], env=env, stderr=err)
    workers: list[int] = []
    deadline = time.monotonic() + 60
    while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
        time.sleep(0.2)
        workers = [int(p.name.split("-")[1]) for p in (tmp_path / "work").rglob("worker-*")]
    try:
        assert len(workers) == 2, "the two jobs did not start in workers"
        parent.send_signal(getattr(signal, signal_name))
        parent.wait(timeout=30)
        if signal_name == "SIGTERM":  # handled as Ctrl-C
            assert parent.returncode == 130 and "interrupted" in (tmp_path / "stderr.txt").read_text()
        deadline = time.monotonic() + 10
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(map(_alive, workers)), f"workers outlived their parent ({signal_name})"
    finally:
        parent.kill()
        for pid in filter(_alive, workers):
            os.kill(pid, signal.SIGKILL)


# --- the offline LLM's converted copy: no half-written folders left behind ---------------------

class _Tokenizer:
    def __init__(self, fail: bool = False):
        self.fail = fail

    def save_pretrained(self, path):
        if self.fail:
            raise OSError("disk full")
        (Path(path) / "tokenizer.json").write_text("{}")


def _tiny_lm():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=1, n_embd=8, vocab_size=16, n_positions=8))


def test_converted_llm_copy_removes_what_killed_conversions_left(tmp_path):
    from bench.llm import LocalLLM

    target = tmp_path / "smollm2-135m-x-fp32"
    stale = tmp_path / f".{target.name}-k1ll3d"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    LocalLLM._save_converted(_tiny_lm(), _Tokenizer(), target)
    assert (target / "config.json").exists() and (target / "tokenizer.json").exists()
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f".{target.name}-")) == []


def test_a_failed_conversion_leaves_no_temporary_folder(tmp_path):
    from bench.llm import LocalLLM

    target = tmp_path / "smollm2-135m-x-fp32"
    model = _tiny_lm()
    assert LocalLLM._save_converted(model, _Tokenizer(fail=True), target) is model  # falls back, logs
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{target.name}-")] == []
