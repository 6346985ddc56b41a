"""Config loading: YAML + dotted overrides, with errors that name key, value and expectation."""

from pathlib import Path

import pytest

from raylam.config import ConfigError, apply_overrides
from raylam.experiment import ExperimentConfig, load_experiment

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUICKSTART = CONFIGS / "quickstart.yaml"


def test_quickstart_loads_and_overrides_apply(tmp_path):
    cfg = load_experiment(QUICKSTART, ["collect.episodes=3", "collect.env.preset=hard"])
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.collect.episodes == 3
    assert cfg.collect.env.preset == "hard"
    assert cfg.collect.env.task == "cheetah-run"


@pytest.mark.parametrize("path", ["cheetah_run_paper", "walker_run_paper", "hopper_hop_paper", "humanoid_walk_paper"])
def test_paper_configs_load(path):
    cfg = load_experiment(CONFIGS / f"{path}.yaml")
    assert cfg.collect.episodes == 5000 and cfg.collect.num_labeled == 128


@pytest.mark.parametrize(
    "override, message",
    [
        ("collect.episodez=3", "unknown key collect.episodez"),
        ("collect.episodes=three", "collect.episodes: got 'three' (str), expected an integer"),
        ("collect.episodes=0", "collect.episodes: got 0, expected a value >= 1"),
        ("collect.env.preset=extreme", "collect.env.preset: got 'extreme'"),
        ("collect.env.image_size=0", "collect.env.image_size: got 0"),
        ("collect.frames_format=gif", "collect.frames_format: got 'gif', expected one of ['mp4', 'npy']"),
        ("collect.num_labeled=99", "num_labeled: got 99, expected a value <= episodes"),
        ("collect.overlap=64", "overlap: got 64, expected a value < clip_length (64)"),
        ("collect.num_workers=1.5", "collect.num_workers: got 1.5"),
        ("collect.progress=maybe", "collect.progress: got 'maybe' (str), expected true/false"),
    ],
)
def test_bad_values_fail_with_key_value_and_expectation(override, message):
    with pytest.raises(ConfigError) as err:
        load_experiment(QUICKSTART, [override])
    assert message in str(err.value)
    assert "configs/quickstart.yaml" in str(err.value)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["collect.episodes"])
    with pytest.raises(ConfigError, match="not a mapping"):
        apply_overrides({"collect": 3}, ["collect.episodes=2"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_experiment(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("collect: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_experiment(listy)


@pytest.mark.parametrize("name", ["idm", "lapo", "laom", "laom_sup"])
def test_paper_training_chains_load(name):
    cfg = load_experiment(CONFIGS / f"{name}.yaml")
    first = cfg.stage(0)
    assert first.model.method == name and first.batch_size == 512 and first.precision == "bf16"
    assert cfg.stage(1).stage == "relabel" and cfg.stage(1).lam_run == f"runs/{name}/{name}"
    if name == "laom_sup":
        assert first.model.latent_dim == 8192 and first.model.encoder_scale == 6 and first.model.sup_coef == 0.001


def test_quickstart_chain_resolves_stage_references():
    cfg = load_experiment(QUICKSTART, ["train.steps=7"])
    names = [s["run_name"] for s in cfg.stages]
    assert names[:4] == ["laom_sup", "laom_sup_labels", "laom_sup_bc", "laom_sup_decoder"]
    bc = cfg.stage(2)
    assert bc.stage == "latent_bc" and bc.labels == "runs/quickstart/laom_sup_labels"
    assert bc.storage_path == "runs/quickstart" and bc.steps == 7  # train.* overrides reach every stage
    assert cfg.stage(0).model.method == "laom_sup" and cfg.stage(0).model.image_size == 64


def test_chain_errors_name_the_stage(tmp_path):
    bad = tmp_path / "exp.yaml"
    bad.write_text(
        "train: {dataset: d}\n"
        "stages:\n"
        "  - {run_name: a, stage: relabel, lam_run: later}\n"
        "  - {run_name: later, stage: lam}\n"
    )
    with pytest.raises(ConfigError, match=r"stages\[0\].lam_run: 'later' is not an earlier stage"):
        load_experiment(bad)
    bad.write_text("stages:\n  - {run_name: a, stage: idm}\n")
    with pytest.raises(ConfigError, match=r"stages\[0\] \(a\): model.method: got 'laom_sup', stage 'idm' expects"):
        load_experiment(bad)
