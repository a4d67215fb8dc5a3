from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from bench import config as cfg
from bench.errors import ConfigError, UnknownNameError
from bench.models import MODELS
from bench.registry import Registry


def test_registry_lazy_duplicate_and_suggestion():
    reg = Registry("model")
    reg.register("sasrec", "no.such.module:Thing")  # lazy: nothing imported yet
    with pytest.raises(ValueError, match="twice"):
        reg.register("sasrec", "x:y")
    with pytest.raises(ValueError, match="kebab"):
        reg.register("SASRec", "x:y")
    with pytest.raises(UnknownNameError, match="Did you mean sasrec"):
        reg.get("sasrek")
    with pytest.raises(ModuleNotFoundError):
        reg.get("sasrec")


def test_resolve_all_and_lists():
    assert MODELS.resolve("all") == MODELS.names()
    assert MODELS.resolve("pop, ease,pop") == ["pop", "ease"]
    with pytest.raises(UnknownNameError, match="unknown model 'eas'.*Did you mean ease"):
        MODELS.resolve("pop,eas")


def test_cli_help_and_ls_do_not_import_torch():
    code = ("import sys; from bench.cli import main; main(['ls']); "
            "assert 'torch' not in sys.modules and 'recbole' not in sys.modules, 'heavy import'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "ease" in out.stdout and "am-toys" in out.stdout and "smoke" in out.stdout


def test_overrides_and_build():
    over = cfg.parse_overrides(["ease.l2=250", "split.protocol=loo", "itemknn.k=10"])
    assert over == {"ease": {"l2": 250}, "split": {"protocol": "loo"}, "itemknn": {"k": 10}}
    ease_cls = MODELS.get("ease").Config
    conf = cfg.build(ease_cls, {"l2": "300"}, "ease")
    assert conf.l2 == 300.0 and isinstance(conf.l2, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        conf.l2 = 1.0  # type: ignore[misc]
    with pytest.raises(ConfigError, match="Did you mean l2"):
        cfg.build(ease_cls, {"l3": 1}, "ease")
    with pytest.raises(ConfigError, match="not a valid int"):
        cfg.build(MODELS.get("itemknn").Config, {"k": "many"}, "itemknn")
    with pytest.raises(ConfigError, match="SCOPE.KEY=VALUE"):
        cfg.parse_overrides(["l2=3"])


def test_presets_load_and_layering(tmp_path):
    from bench.paths import Workspace
    from bench.runner import plan

    assert {"smoke", "default"} <= set(cfg.preset_names())
    smoke = cfg.load_preset("smoke")
    jobs = plan(smoke, Workspace(tmp_path), models="ease", datasets="synthetic-tiny", seeds=(0, 1),
                overrides=cfg.parse_overrides(["ease.l2=7", "split.cold_start=true"]))
    assert [j.seed for j in jobs] == [0, 1]
    assert jobs[0].config.l2 == 7.0 and jobs[1].config.seed == 1
    assert jobs[0].split.cold_start and jobs[0].split.name == "random-s0-cold50"
    # smoke section of bench/configs/models/ease.yaml applies when not overridden
    assert plan(smoke, Workspace(tmp_path), models="ease", datasets="synthetic-tiny")[0].config.l2 == 100.0
    with pytest.raises(UnknownNameError, match="unknown preset"):
        cfg.load_preset("smok")
    # A split entry may name its models: smoke's cold-start split is for three models only.
    cold = {j.model for j in plan(smoke, Workspace(tmp_path), datasets="synthetic-tiny") if j.split.cold_start}
    assert cold == {"pagellm", "multivae", "sasrec"}
    assert not [j for j in plan(smoke, Workspace(tmp_path), models="ease", datasets="synthetic-tiny")
                if j.split.cold_start]
    all_cold = plan(smoke, Workspace(tmp_path), datasets="synthetic-tiny",
                    overrides=cfg.parse_overrides(["split.cold_start=true"]))
    assert len(all_cold) == len({j.key for j in all_cold}) == len(MODELS.names())


def test_preset_aliases_run_one_model_under_two_settings(tmp_path):
    from bench.paths import Workspace
    from bench.runner import plan

    preset = cfg.Preset(name="t", datasets=("synthetic-tiny",), models=("ease-lo", "ease-hi", "pop"),
                        aliases={"ease-lo": {"model": "ease", "config": {"l2": 1}},
                                 "ease-hi": {"model": "ease", "config": {"l2": 1000}}})
    jobs = {j.model: j for j in plan(preset, Workspace(tmp_path))}
    assert set(jobs) == {"ease-lo", "ease-hi", "pop"}
    assert jobs["ease-lo"].model_class_name == "ease" and jobs["pop"].model_class_name == "pop"
    assert (jobs["ease-lo"].config.l2, jobs["ease-hi"].config.l2) == (1.0, 1000.0)
    assert jobs["ease-lo"].config_hash(preset) != jobs["ease-hi"].config_hash(preset)
    assert jobs["ease-lo"].result_path(Workspace(tmp_path)).parent.name == "ease-lo"


@pytest.mark.parametrize("section", ["smoke", "paper"])
def test_pagellm_variants_resolve_to_the_same_settings(tmp_path, section):
    """The variants share training stages only if they plan to identical configurations."""
    from bench.paths import Workspace
    from bench.runner import plan

    preset = cfg.Preset(name="t", datasets=("synthetic-tiny",), model_settings=section,
                        models_config={"pagellm": {"ppo_lr": 3e-4}})
    jobs = plan(preset, Workspace(tmp_path), models="pagellm,pagellm-item,pagellm-page,pagellm-sft",
                overrides=cfg.parse_overrides(["pagellm-sft.finetune_epochs=2"]))
    configs = {j.model: dataclasses.asdict(j.config) for j in jobs}
    assert configs["pagellm"]["ppo_lr"] == 3e-4
    assert configs["pagellm"] == configs["pagellm-item"] == configs["pagellm-page"]
    assert configs["pagellm-sft"]["finetune_epochs"] == 2  # --set still reaches one variant only
    assert (configs["pagellm"]["backbone"] == "tiny") == (section == "smoke")


@pytest.mark.parametrize("name", cfg.preset_names())
def test_every_preset_plans(tmp_path, name):
    """Each shipped preset names known datasets, models and settings (planning reads no data)."""
    from bench.paths import Workspace
    from bench.runner import plan

    preset = cfg.load_preset(name)
    jobs = plan(preset, Workspace(tmp_path))
    assert jobs and preset.description
    assert {j.seed for j in jobs} == set(preset.seeds)
    assert len(jobs) == len({(j.dataset, j.split.name, j.model, j.seed) for j in jobs})
