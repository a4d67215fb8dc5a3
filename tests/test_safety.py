"""Nothing runs that should not, nothing is lost: hostile settings and names, concurrent
runners, interrupted stages and parallel workers."""

from __future__ import annotations

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
