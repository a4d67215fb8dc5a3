"""Measured cost of each model: what `bench ls models` shows and what the grid's ETA weighs.

The numbers live in ``bench/configs/costs.yaml``, one *profile* per machine and run, each naming
its hardware, the command and commit that produced it, and the dataset. They are never typed in
by hand: ``scripts/measure_costs.py`` reads them out of a finished run's result files
(``results/runs/<preset>/<dataset>/<split>/<model>/seed<k>.json``):

    python scripts/measure_costs.py --results results --preset cpu --profile cpu-2core \\
        --hardware "2 cores of an Intel Xeon VM, 23 GB, no GPU" --run "bench run (cpu preset)"

A model's cost is the seconds a job of it takes alone: fit + predict. PageLLM's variants share
their stages (pre-training, fine-tuning, reward models) through a cache, so a variant that found
a stage cached did not pay for it in that run; its cost counts every stage it uses at the
seconds recorded by whichever job computed it. A grid of all four variants therefore costs less
than the sum of their hints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.config import CONFIG_DIR
from bench.errors import ConfigError

COSTS_FILE = CONFIG_DIR / "costs.yaml"


@dataclass(frozen=True)
class Profile:
    """Seconds per model measured on one machine in one run."""

    name: str
    hardware: str
    run: str  # the command, preset, commit and date that produced the numbers
    datasets: dict[str, str]  # dataset -> its size, as the run's split.json gives it
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> dataset -> s

    def model_seconds(self, model: str, dataset: str | None = None) -> float | None:
        """A model's seconds on `dataset` (default: the profile's first dataset it ran on)."""
        by_dataset = self.seconds.get(model, {})
        if dataset is not None:
            return by_dataset.get(dataset)
        for name in self.datasets:
            if name in by_dataset:
                return by_dataset[name]
        return None


def load_profiles(path: Path = COSTS_FILE) -> list[Profile]:
    if not path.exists():
        return []
    data = yaml.safe_load(path.read_text()) or {}
    profiles = []
    for name, body in (data.get("profiles") or {}).items():
        try:
            profiles.append(Profile(name, body["hardware"], body["run"], dict(body["datasets"]),
                                    {m: dict(v) for m, v in (body.get("seconds") or {}).items()}))
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: profile {name!r} lacks {exc}; regenerate it with "
                              "scripts/measure_costs.py") from exc
    return profiles


def cost_hints(profile: Profile | None = None) -> dict[str, float]:
    """Model -> seconds on the first profile (the reference machine), for relative weights."""
    if profile is None:
        profiles = load_profiles()
        if not profiles:
            return {}
        profile = profiles[0]
    return {m: s for m in profile.seconds if (s := profile.model_seconds(m)) is not None}


def job_seconds(result: dict[str, Any]) -> float:
    """Seconds a job costs alone, from its result JSON: fit + predict, with PageLLM's shared
    stages counted in full even where this job found them cached (see the module docstring)."""
    timing = result.get("timing") or {}
    fit = float(timing.get("fit_seconds") or 0.0)
    stages = (result.get("model_info") or {}).get("stages")
    if isinstance(stages, dict) and stages:
        fit = sum(float(s.get("seconds") or 0.0) for s in stages.values() if isinstance(s, dict))
    return fit + float(timing.get("predict_seconds") or 0.0)


def measure(results: Path, preset: str, *, seed: int = 0) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Seconds per model and dataset of one preset's finished run, and each dataset's size."""
    runs = Path(results) / "runs" / preset
    files = sorted(runs.glob(f"*/*/*/seed{seed}.json"))
    if not files:
        raise ConfigError(f"no results of preset {preset!r} (seed {seed}) under {runs}; "
                          f"run `bench run --preset {preset}` first, or pass --results")
    seconds: dict[str, dict[str, float]] = {}
    datasets: dict[str, str] = {}
    for path in files:
        result = json.loads(path.read_text())
        dataset, model = path.parts[-4], path.parts[-2]
        seconds.setdefault(model, {})[dataset] = round(job_seconds(result), 2)
        split = result.get("split") or {}
        datasets.setdefault(dataset, f"{split.get('n_train', '?'):,} train interactions, "
                                     f"{split.get('n_users', '?'):,} users, {split.get('n_items', '?'):,} items"
                            if isinstance(split.get("n_train"), int) else "size unknown")
    return seconds, datasets


def write_profile(profile: Profile, path: Path = COSTS_FILE) -> None:
    """Add or replace one profile in the costs file, keeping the others and their order."""
    data = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    profiles = data.get("profiles") or {}
    profiles[profile.name] = {"hardware": profile.hardware, "run": profile.run,
                              "datasets": profile.datasets, "seconds": profile.seconds}
    header = "# Written by scripts/measure_costs.py from a finished run's result files; do not edit by hand.\n"
    path.write_text(header + yaml.safe_dump({"profiles": profiles}, sort_keys=False, allow_unicode=True))
