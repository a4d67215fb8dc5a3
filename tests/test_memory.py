"""Memory checks before big allocations (issue 12, section 3): the reader of available memory,
the one refusal message, and the runner recording a refused job as failed while the grid goes on."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import memory
from bench.cli import main
from bench.errors import BenchError, NotEnoughMemory

GIB = 2**30


def _cgroup(tmp_path: Path, proc_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp_path / "proc_cgroup"
    proc.write_text(proc_line + "\n")
    return root, proc


def test_cgroup_v2_headroom_counts_dropable_cache_as_free(tmp_path):
    root, proc = _cgroup(tmp_path, "0::/job", {
        "job/memory.max": f"{8 * GIB}\n", "job/memory.current": f"{3 * GIB}\n",
        "job/memory.stat": f"anon 1\ninactive_file {GIB}\nactive_file 5\n",
    })
    assert memory.cgroup_headroom(root, proc) == 6 * GIB  # 8 - (3 - 1)


def test_cgroup_v2_the_tightest_ancestor_wins_and_max_is_no_limit(tmp_path):
    root, proc = _cgroup(tmp_path, "0::/a/b", {
        "a/memory.max": f"{4 * GIB}", "a/memory.current": f"{3 * GIB}",
        "a/b/memory.max": "max", "a/b/memory.current": f"{GIB}",
    })
    assert memory.cgroup_headroom(root, proc) == GIB


def test_cgroup_v1_and_no_limit(tmp_path):
    root, proc = _cgroup(tmp_path, "4:memory:/slurm/job1\n3:cpu:/", {
        "memory/slurm/job1/memory.limit_in_bytes": f"{2 * GIB}",
        "memory/slurm/job1/memory.usage_in_bytes": f"{GIB}",
        "memory/slurm/job1/memory.stat": f"cache 9\ntotal_inactive_file {GIB // 2}\n",
        "memory/memory.limit_in_bytes": "9223372036854771712", "memory/memory.usage_in_bytes": "5",
    })
    assert memory.cgroup_headroom(root, proc) == GIB + GIB // 2
    unlimited, proc = _cgroup(tmp_path / "u", "4:memory:/", {
        "memory/memory.limit_in_bytes": "9223372036854771712", "memory/memory.usage_in_bytes": "5"})
    assert memory.cgroup_headroom(unlimited, proc) is None
    assert memory.cgroup_headroom(tmp_path / "absent", tmp_path / "absent_proc") is None


def test_available_is_the_least_of_the_machine_and_the_cgroup(monkeypatch):
    monkeypatch.setattr(memory, "cgroup_headroom", lambda: 3 * GIB)
    assert memory.available_bytes() <= 3 * GIB
    monkeypatch.setattr(memory, "cgroup_headroom", lambda: None)
    assert memory.available_bytes() > 0


def test_require_names_need_available_and_fix(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 10 * GIB)
    memory.require(8 * GIB, "m", "its matrix", 5, "Lower it with --set m.x=1")  # 8 <= 0.9 x 10
    with pytest.raises(NotEnoughMemory) as err:
        memory.require(9.5 * GIB, "m", "its matrix", 123_456, "Lower it with --set m.x=1")
    assert isinstance(err.value, BenchError)
    assert str(err.value) == ("m needs about 9.5 GiB for its matrix (n_items=123,456); this machine has "
                              "10.0 GiB available. Lower it with --set m.x=1")


def test_refused_job_is_a_failed_job_with_the_message_and_the_grid_goes_on(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 2**20)  # 1 MiB: ease and itemknn cannot fit
    code = main(["--root", str(tmp_path), "run", "--models", "ease,pop,itemknn", "--datasets", "synthetic-tiny",
                 "--preset", "smoke", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "1 ran, 0 skipped, 2 failed" in captured.out
    assert "ease needs about" in captured.err and "--set ease.dtype=float32" in captured.err
    assert "itemknn needs about" in captured.err
    assert "this machine has 0.0 GiB available" in captured.err
    runs = tmp_path / "results" / "runs"
    assert list(runs.rglob("pop/*.json")) and not list(runs.rglob("ease/*.json"))
    tb = list((tmp_path / "results" / "failures").glob("*ease*.txt"))
    assert tb and "NotEnoughMemory" in tb[0].read_text()
