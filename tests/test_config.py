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
