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


def test_pooled_r2_is_not_swung_by_a_dim_that_barely_varies():
    """A saturated action dim (the expert at its bound) has almost no variance in the scored windows:
    a small error there sends its R² far below zero and drags the mean of the per-dim R², while the
    pooled R² (1 - sum SSE / sum SST) weighs each dim by its variance."""
    gen = torch.Generator().manual_seed(0)
    target = torch.cat([torch.randn(400, 2, generator=gen), 1 + 0.01 * torch.randn(400, 1, generator=gen)], 1)
    pred = target.clone()
    pred[:, :2] += 0.5 * torch.randn(400, 2, generator=gen)  # R² ~ 0.75 on the varying dims
    pred[:, 2] += 0.05  # an error of 0.05 on the dim whose std is 0.01
    m = Moments()
    m.add(pred, target)
    _, r2 = m.per_dim()
    assert 0.6 < r2[0] < 0.9 and 0.6 < r2[1] < 0.9 and r2[2] < -10
    assert m.result()[1] < 0  # the mean: below a model that predicts nothing
    sse = (pred - target).pow(2).sum()
    sst = (target - target.mean(0)).pow(2).sum()
    assert abs(m.pooled_r2() - float(1 - sse / sst)) < 1e-6 and 0.6 < m.pooled_r2() < 0.9


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
    assert ("| laom_sup | cheetah-run | 2 | 0 | 0.1000 | 0.500 | 0.500 | 0.200 | — | 0.600 ± 0.050 | 0.600 ± 0.050 "
            "| 0.600 ± 0.050 |") in text
    # the two background splits side by side, named for a reader
    assert ("| normalized return (vanilla) | normalized return (hard · paper protocol: train backgrounds) "
            "| normalized return (hard · held-out backgrounds) |") in text
    assert "Training seeds: 1 (0)." in text and "Per training seed" not in text
    for name in (FIG_RETURN, FIG_PROBE, "frames_laom_sup_vanilla.png", "frames_laom_sup_hard-eval.png",
                 "report.html"):
        assert (a / name).stat().st_size > 0, name
    merged = merge_results([str(a), str(b / "results.json")])
    # the two evaluations rolled out the same expert episodes: that row counts once
    assert len(merged["rows"]) == 5 and {r["num_labeled"] for r in merged["rows"]} == {2, 8}
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
    assert laom[:8] == ["laom_sup", "cheetah-run", "4", "0, 1, 2", "0.2000 ± 0.0816", "0.500 ± 0.000",
                        "0.500 ± 0.000", "0.200 ± 0.000"]  # one dim: pooled R² = its R²
    assert laom[8] == "—"  # these rows carry no in-training probe metrics
    assert laom[9] == "0.600 ± 0.082"
    assert idm[3] == "1" and idm[9] == "0.300 ± 0.050"  # one seed: ± over its episodes
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


@pytest.mark.slow
def test_probe_as_ray_work_equals_the_in_driver_probe(ray_local, tmp_path):
    """The probe actors' summed x'x, x'y and error sums give the in-driver probe's numbers."""
    from raylam.config import to_dict
    from raylam.eval.probes import _features, probe_run
    from raylam.models import ModelConfig, build_model
    from raylam.train.artifacts import load_run
    from raylam.train.checkpoint import save_checkpoint

    manifest = write_synthetic_dataset(str(tmp_path / "data"), episodes=3, episode_length=40, image_size=32,
                                       clip_length=20, overlap=12, num_labeled=1, heldout_episodes=1)
    torch.manual_seed(0)
    model_cfg = ModelConfig.small("laom", max_offset=2)
    model = build_model(model_cfg, manifest["action_dim"], manifest["state_dim"])
    checkpoint = tmp_path / "laom" / "checkpoint_x"
    checkpoint.mkdir(parents=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    meta = {"stage": "lam", "model": to_dict(model_cfg), "dataset": str(tmp_path / "data"), "num_labeled": 1,
            "action_dim": manifest["action_dim"], "state_dim": manifest["state_dim"]}
    save_checkpoint(str(checkpoint), model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                    0, meta)
    run = tmp_path / "laom"
    (run / "artifact.json").write_text(json.dumps({"stage": "lam", "method": "laom", "config": {},
                                                   "checkpoint": str(checkpoint), "dataset": meta["dataset"]}))
    cfg = ProbeConfig(batch_size=16, stats_windows=50, max_fit_windows=None, num_actors=1, use_gpu=False)

    distributed = probe_run(str(run), cfg)
    loaded, _, _ = load_run(str(run))
    in_driver = stream_probes(DatasetInfo(meta["dataset"]), model_cfg.frame_stack, cfg,
                              lambda b: (lambda z, maps: (z, _features(maps, cfg.state_features)))(
                                  *loaded.probe_inputs(b.obs, b.next_obs)))
    assert distributed["fit_windows"] == in_driver["fit_windows"] == 3 * 39
    assert distributed["test_windows"] == in_driver["test_windows"] == 39
    for kind in ("action", "state"):
        for key in ("mse", "r2"):
            assert distributed[kind][key] == pytest.approx(in_driver[kind][key], rel=1e-6, abs=1e-9), (kind, key)
        np.testing.assert_allclose(distributed[kind]["mse_per_dim"], in_driver[kind]["mse_per_dim"], rtol=1e-6)
    assert distributed["latent_dim"] == model_cfg.latent_dim


def _storage_uris(request, tmp_path) -> list[str]:
    """A local file:// URI, and an s3:// bucket on the test S3 server when conftest provides one."""
    uris = [f"file://{tmp_path}/out"]
    try:
        make_bucket = request.getfixturevalue("s3_server")
    except pytest.FixtureLookupError:
        return uris
    return uris + [f"{make_bucket()}/out"]


def test_report_and_episode_log_go_to_any_uri(request, tmp_path):
    """The report's files and the rollouts' episode log, written through pyarrow.fs and read back."""
    from raylam.data.storage import resolve
    from raylam.eval.report import FIG_RETURN, REPORT_HTML, REPORT_MD, write_report
    from raylam.eval.rollout import EpisodeLog

    for uri in _storage_uris(request, tmp_path):
        md = write_report(_results([("laom_sup", 2, 0.6, 0.1), ("expert", 2, 1.0, None)]), f"{uri}/report",
                          {"laom_sup": {"vanilla": np.zeros((2, 16, 16, 3), np.uint8)}})
        out = resolve(f"{uri}/report")
        assert md == out.url(REPORT_MD)
        names = out.list()
        assert {REPORT_MD, REPORT_HTML, FIG_RETURN, "frames_laom_sup_vanilla.png"} <= set(names), names
        assert not [n for n in names if ".tmp-" in n]  # every file renamed into place
        with out.open_read(REPORT_MD) as stream:
            assert "| laom_sup | cheetah-run | 2 |" in stream.read().decode()

        identity = {"agent": {"kind": "expert"}, "seed": 1000, "strip": [0, 5]}
        log = EpisodeLog(resolve(f"{uri}/episodes"), "vanilla", identity)
        frames = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
        log.add({"index": 0, "seed": 11, "return": 1.5, "steps": 6, "frames": frames}, run="a")
        log.add({"index": 1, "seed": 12, "return": 2.5, "steps": 6, "frames": None}, run="a")
        again = EpisodeLog(resolve(f"{uri}/episodes"), "vanilla", identity)  # as a resumed evaluation sees it
        assert again.done(0) and again.done(1) and not again.done(2)
        first, second = again.results(2)
        np.testing.assert_array_equal(first["frames"], frames)
        assert (first["return"], second["return"], second["frames"]) == (1.5, 2.5, None)
        other = EpisodeLog(resolve(f"{uri}/episodes"), "vanilla", {**identity, "seed": 7})
        assert not other.done(0)  # made by other episodes: not reused
