"""Evaluation: streamed probes are honest, reports render and merge."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from raylam.config import ConfigError, from_dict
from raylam.data.pipeline import DatasetInfo
from raylam.data.synthetic import write_synthetic_dataset
from raylam.eval.config import EvalConfig, ProbeConfig
from raylam.eval.probes import stream_probes
from raylam.models import Moments, RidgeFit, fit_linear_probe


@pytest.fixture(scope="module")
def probe_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe") / "data"
    write_synthetic_dataset(str(out), episodes=4, episode_length=60, image_size=16, clip_length=30, overlap=12,
                            num_labeled=1, heldout_episodes=2)
    return DatasetInfo(str(out))


def test_probe_is_honest(ray_local, probe_data):
    """z = a gives R^2 ~ 1 and MSE ~ 0; noise gives R^2 ~ 0, streamed through the real pipeline."""
    cfg = ProbeConfig(batch_size=32, max_fit_windows=None)
    truth = stream_probes(probe_data, 3, cfg, lambda b: (b.actions, b.states))
    assert truth["fit_windows"] == 4 * 59 and truth["test_windows"] == 2 * 59
    for kind in ("action", "state"):
        assert truth[kind]["r2"] > 0.999 and truth[kind]["mse"] < 1e-3, (kind, truth[kind])
        assert len(truth[kind]["r2_per_dim"]) == probe_data.manifest[f"{kind}_dim"]
    gen = torch.Generator().manual_seed(0)
    noise = stream_probes(probe_data, 3, cfg, lambda b: (torch.randn(len(b), 4, generator=gen),
                                                         torch.randn(len(b), 4, generator=gen)))
    for kind in ("action", "state"):
        assert abs(noise[kind]["r2"]) < 0.1, (kind, noise[kind])
    assert noise["action"]["mse"] > 100 * truth["action"]["mse"]


def test_probe_fit_is_capped_and_splits_checked(ray_local, probe_data):
    cfg = ProbeConfig(batch_size=16, max_fit_windows=50)
    out = stream_probes(probe_data, 3, cfg, lambda b: (b.actions, b.states))
    assert out["fit_windows"] == 50
    with pytest.raises(ValueError, match="no 'eval' split"):
        stream_probes(probe_data, 3, ProbeConfig(test_split="eval"), lambda b: (b.actions, b.states))


def test_streamed_ridge_equals_one_shot_fit():
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(300, 5, generator=gen), torch.randn(5, 2, generator=gen)
    y = x @ w + 0.1 * torch.randn(300, 2, generator=gen)
    fit = RidgeFit()
    for chunk in range(0, 200, 64):
        fit.add(x[chunk:min(chunk + 64, 200)], y[chunk:min(chunk + 64, 200)])
    m = Moments()
    m.add(RidgeFit.predict(x[200:], fit.solve(1e-3)), y[200:])
    assert np.allclose(m.result(), tuple(fit_linear_probe(x[:200], y[:200], x[200:], y[200:]).values()))
    mse, r2 = m.per_dim()
    assert len(mse) == 2 and all(0.9 < r < 1 for r in r2)


def _results(method_rows: list[tuple], task="cheetah-run") -> dict:
    """Rows of (method, budget, normalized return, probe MSE[, training seed]) in results.json's format."""
    rows = []
    for method, budget, normalized, probe_mse, *seed in method_rows:
        probe = None if probe_mse is None else {
            "action": {"mse": probe_mse, "r2": 0.5, "mse_per_dim": [probe_mse], "r2_per_dim": [0.5]},
            "state": {"mse": 1.0, "r2": 0.2, "mse_per_dim": [1.0], "r2_per_dim": [0.2]}}
        rollout = {"episodes": 2, "returns": [1.0, 2.0], "return_mean": 1.5, "return_std": 0.5,
                   "normalized_mean": normalized, "normalized_std": 0.05}
        rollouts = {"vanilla": {**rollout, "setting": "vanilla", "background_split": None},
                    **{f"hard/{split}": {**rollout, "setting": "hard", "background_split": split}
                       for split in ("train", "eval")}}
        reference = method in ("expert", "random")
        rows.append({"method": method, "task": task, "num_labeled": budget,
                     "seed": None if reference else (seed[0] if seed else 0), "dataset": "d",
                     "runs": {}, "probe": probe, "rollouts": rollouts})
    return {"format": "raylam-results/1", "experiment": "t", "rows": rows,
            "config": {"rollout": {"episodes": 2, "background_splits": ["train", "eval"]}}}


def test_report_renders_and_merges(tmp_path):
    from raylam.eval.report import FIG_PROBE, FIG_RETURN, load_results, merge_results, write_report

    a, b = tmp_path / "a", tmp_path / "b"
    for path, budget in ((a, 2), (b, 8)):
        path.mkdir()
        doc = _results([("laom_sup", budget, 0.6, 0.1), ("idm", budget, 0.3, 0.4), ("expert", 2, 1.0, None)])
        (path / "results.json").write_text(json.dumps(doc))
    strips = {"laom_sup": {"vanilla": np.zeros((3, 16, 16, 3), np.uint8),
                           "hard/eval": np.zeros((3, 16, 16, 3), np.uint8)}}
    md = write_report(load_results(str(a)), str(a), strips)
    text = open(md).read()
    # (no in-training probe metrics in this row: "—")
    assert ("| laom_sup | cheetah-run | 2 | 0 | 0.1000 | 0.500 | 0.200 | — | 0.600 ± 0.050 | 0.600 ± 0.050 "
            "| 0.600 ± 0.050 |") in text
    # the two background splits side by side, named for a reader
    assert ("| normalized return (vanilla) | normalized return (hard · paper protocol: train backgrounds) "
            "| normalized return (hard · held-out backgrounds) |") in text
    assert "Training seeds: 1 (0)." in text and "Per training seed" not in text
    for name in (FIG_RETURN, FIG_PROBE, "frames_laom_sup_vanilla.png", "frames_laom_sup_hard-eval.png",
                 "report.html"):
        assert (a / name).stat().st_size > 0, name
    merged = merge_results([str(a), str(b / "results.json")])
    assert len(merged["rows"]) == 6 and {r["num_labeled"] for r in merged["rows"]} == {2, 8}
    assert merged["config"]["rollout"]["background_splits"] == ["train", "eval"]
    write_report(merged, str(tmp_path / "merged"))
    assert (tmp_path / "merged" / FIG_RETURN).stat().st_size > 0
    with pytest.raises(FileNotFoundError, match="not an evaluation output"):
        load_results(str(tmp_path / "nothing"))
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="expected format 'raylam-results/1'"):
        load_results(str(tmp_path / "bad.json"))


def test_eval_config_errors():
    with pytest.raises(ConfigError, match="rollout.settings\\[1\\]: got 'foggy'"):
        from_dict(EvalConfig, {"rollout": {"settings": ["vanilla", "foggy"]}})
    with pytest.raises(ConfigError, match="a decoder needs a policy"):
        from_dict(EvalConfig, {"methods": [{"name": "x", "decoder": "d"}]})
    with pytest.raises(ConfigError, match="names must be unique"):
        from_dict(EvalConfig, {"methods": [{"name": "x", "lam": "a"}, {"name": "x", "lam": "b"}]})


def test_report_shows_mean_and_std_over_seeds(tmp_path):
    from raylam.eval.report import FIG_PROBE, FIG_RETURN, aggregate_returns, table_rows, write_report

    doc = _results([("laom_sup", 4, 0.5, 0.1, 0), ("laom_sup", 4, 0.7, 0.3, 1), ("laom_sup", 4, 0.6, 0.2, 2),
                    ("idm", 4, 0.3, 0.4, 1), ("expert", 4, 1.0, None)])
    header, lines = table_rows(doc["rows"])
    assert header[:4] == ["method", "task", "labeled", "seeds"]
    laom, idm, expert = lines
    # mean ± std over the three seeds (np.std: population), the seeds listed
    assert laom[:7] == ["laom_sup", "cheetah-run", "4", "0, 1, 2", "0.2000 ± 0.0816", "0.500 ± 0.000",
                        "0.200 ± 0.000"]
    assert laom[7] == "—"  # these rows carry no in-training probe metrics
    assert laom[8] == "0.600 ± 0.082"
    assert idm[3] == "1" and idm[8] == "0.300 ± 0.050"  # one seed: ± over its episodes
    assert expert[2:4] == ["—", "—"]
    curve = aggregate_returns(doc["rows"])[("cheetah-run", "hard/train")]["laom_sup"]
    assert curve[0][0] == 4 and curve[0][1] == pytest.approx(0.6) and curve[0][3] == 3
    text = open(write_report(doc, str(tmp_path))).read()
    assert "Training seeds: 3 (0, 1, 2)." in text and "std over training seeds" in text
    assert "## Per training seed" in text and text.count("| laom_sup | cheetah-run | 4 |") == 4  # 1 + 3 seeds
    for name in (FIG_RETURN, FIG_PROBE):
        assert (tmp_path / name).stat().st_size > 0


def test_rows_from_vanilla_and_distracting_data_stay_apart():
    from raylam.eval.report import aggregate_returns, table_rows

    distracting, vanilla = _results([("laom_sup", 4, 0.6, 0.1)]), _results([("laom_sup", 4, 0.9, 0.1)])
    distracting["rows"][0]["data"], vanilla["rows"][0]["data"] = "scale_easy_video_hard", "vanilla"
    rows = distracting["rows"] + vanilla["rows"]
    header, lines = table_rows(rows)
    assert header[2] == "data" and [line[2] for line in lines] == ["scale_easy_video_hard", "vanilla"]
    assert set(aggregate_returns(rows)[("cheetah-run", "vanilla")]) == {"laom_sup (scale_easy_video_hard data)",
                                                                        "laom_sup (vanilla data)"}


def test_rollout_conditions_and_split_config():
    from raylam.eval.config import RolloutConfig, rollout_key

    cfg = from_dict(RolloutConfig, {})
    assert cfg.background_splits == ["train", "eval"]  # the paper's protocol and the held-out one
    assert cfg.runs() == [("vanilla", None), ("scale_easy_video_hard", "train"), ("scale_easy_video_hard", "eval")]
    assert [rollout_key(*c) for c in cfg.runs()] == ["vanilla", "scale_easy_video_hard/train",
                                                     "scale_easy_video_hard/eval"]
    old = from_dict(RolloutConfig, {"background_split": "eval", "settings": ["hard"]})  # the former key
    assert old.runs() == [("hard", "eval")] and old.background_split is None
    with pytest.raises(ConfigError, match="background_splits\\[0\\]: got 'test'"):
        from_dict(RolloutConfig, {"background_splits": ["test"]})
    with pytest.raises(ConfigError, match="each split once"):
        from_dict(RolloutConfig, {"background_splits": ["eval", "eval"]})
    with pytest.raises(ConfigError, match="at least one"):
        from_dict(RolloutConfig, {"background_splits": []})


def test_rows_carry_the_training_seed_of_the_artifact():
    from raylam.eval.evaluate import training_seed

    assert training_seed({"config": {"seed": 3}}, fallback=0) == 3
    assert training_seed({"config": {}}, fallback=7) == 7  # a run trained before TrainConfig.seed existed
    assert training_seed(None, fallback=None) is None  # references have no training seed
