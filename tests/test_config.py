"""Config loading: YAML + dotted overrides, with errors that name key, value and expectation."""

import json
import re
from pathlib import Path

import pytest

from raylam.config import ConfigError, apply_overrides
from raylam.experiment import ExperimentConfig, load_experiment

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUICKSTART = CONFIGS / "quickstart.yaml"


def test_quickstart_loads_and_overrides_apply(tmp_path):
    cfg = load_experiment(QUICKSTART, ["collect.episodes=3", "collect.num_labeled=2", "collect.env.preset=hard"])
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.collect.episodes == 3
    assert cfg.collect.env.preset == "hard"
    assert cfg.collect.env.task == "cheetah-run"


@pytest.mark.parametrize("path", ["cheetah_run_paper", "cheetah_run_vanilla_paper", "walker_run_paper",
                                  "hopper_hop_paper", "humanoid_walk_paper"])
def test_paper_configs_load(path):
    cfg = load_experiment(CONFIGS / f"{path}.yaml")
    assert cfg.collect.episodes == 5000 and cfg.collect.num_labeled == 128
    if cfg.evaluate.methods:  # the release's protocol: 25 episodes, train backgrounds (and held-out beside)
        assert cfg.evaluate.rollout.episodes == 25
        assert cfg.evaluate.rollout.background_splits == ["train", "eval"]


def test_vanilla_control_mirrors_the_distracting_experiment():
    vanilla, distracting = (load_experiment(CONFIGS / f"{n}.yaml") for n in ("cheetah_run_vanilla_paper",
                                                                            "cheetah_run_paper"))
    assert vanilla.collect.env.preset == "vanilla" and distracting.collect.env.preset == "scale_easy_video_hard"
    assert vanilla.collect.output == vanilla.train.dataset == "data/cheetah_run_vanilla"
    assert vanilla.run_root() == "runs/cheetah_run_vanilla_paper" != distracting.run_root()
    assert vanilla.stages == distracting.stages  # the same chains, on the other data
    assert {"laom_sup", "laom", "idm"} <= {m.name for m in vanilla.evaluate.methods}
    for i in range(len(vanilla.stages)):
        assert vanilla.stage(i).dataset == "data/cheetah_run_vanilla"
    # a chain file reads the vanilla data in its own run root, as its comments say
    chain = load_experiment(CONFIGS / "laom_sup.yaml", ["name=laom_sup_vanilla",
                                                       "train.dataset=data/cheetah_run_vanilla"])
    assert chain.stage(0).dataset == "data/cheetah_run_vanilla"
    assert chain.stage(1).lam_run == "runs/laom_sup_vanilla/laom_sup"


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
    text = str(err.value)
    assert message in text
    # the override is named as the culprit, not the file; a check across a section names both
    assert text.startswith(f"override {override}: ") or (
        "configs/quickstart.yaml" in text and text.endswith(f"(with override {override})")), text


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
    assert name in [m.name for m in cfg.evaluate.methods]
    assert cfg.evaluate.rollout.episodes == 25 and cfg.evaluate.rollout.background_splits == ["train", "eval"]


def test_seeds_give_each_seed_its_run_root():
    one = load_experiment(QUICKSTART)
    latent_bc = one.stage_index("laom_sup_bc")
    assert one.seed_list() == [0] and one.seed_roots() == {0: "runs/quickstart"}  # the single-seed layout
    assert one.stage(latent_bc).seed == 0 and one.stage(latent_bc).labels == "runs/quickstart/laom_sup_labels"
    three = load_experiment(QUICKSTART, ["seeds=[0, 1, 2]"])
    assert three.seed_roots() == {k: f"runs/quickstart/seed{k}" for k in (0, 1, 2)}
    bc = three.stage(latent_bc, seed=2)
    assert bc.seed == 2 and bc.storage_path == "runs/quickstart/seed2"
    assert bc.labels == "runs/quickstart/seed2/laom_sup_labels"  # stages read their own seed's runs
    assert three.stage(latent_bc).seed == 0 and three.eval_output() == "runs/quickstart/eval"
    moved = load_experiment(QUICKSTART, ["train.seed=3"])  # one seed, set through train: flat layout
    assert moved.seed_list() == [3] and moved.stage(0).seed == 3 and moved.stage(0).storage_path == "runs/quickstart"
    # one seed of a several-seed experiment (`--seeds 0`) is where the several-seed run put it
    assert load_experiment(QUICKSTART, ["seeds=[0]"]).seed_roots() == {0: "runs/quickstart/seed0"}


@pytest.mark.parametrize("override, message", [
    ("seeds=[]", "seeds: got [], expected at least one"),
    ("seeds=[1, 1]", "seeds: got [1, 1], expected each seed once"),
    ("seeds=[-1]", "seeds: got -1, expected a value >= 0"),
    ("seeds=one", "seeds: got 'one'"),
])
def test_bad_seeds(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_experiment(QUICKSTART, [override])


def test_a_stage_cannot_set_its_own_seed(tmp_path):
    bad = tmp_path / "exp.yaml"
    bad.write_text("stages:\n  - {run_name: a, stage: lam, seed: 4}\n")
    with pytest.raises(ConfigError, match=r"stages\[0\].seed: got 4"):
        load_experiment(bad)


def test_cli_seeds_flag(capsys):
    from raylam.cli import main, parse_seeds

    assert parse_seeds("0,1, 2") == [0, 1, 2]
    with pytest.raises(ConfigError, match="comma-separated integers"):
        parse_seeds("0,x")
    for command in ("pipeline", "train", "evaluate"):
        with pytest.raises(SystemExit):
            main([command, "--config", str(QUICKSTART), "--seeds", "1,2", "--print-config"])
        assert json.loads(capsys.readouterr().out)["seeds"] == [1, 2], command
    assert main(["pipeline", "--config", str(QUICKSTART), "--seeds", "0,0"]) == 2
    assert "each seed once" in capsys.readouterr().err


def test_quickstart_chain_resolves_stage_references():
    cfg = load_experiment(QUICKSTART, ["train.steps=7"])
    names = [s["run_name"] for s in cfg.stages]
    chain = ["laom_sup", "laom_sup_labels", "laom_sup_bc", "laom_sup_decoder"]
    assert [n for n in names if n in chain] == chain  # each stage after the ones it reads
    bc = cfg.stage(names.index("laom_sup_bc"))
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


def test_numbers_as_users_write_them(tmp_path):
    """YAML 1.2 floats (3e-4, 1e4) in a file, in dotted overrides and in a sweep's search space."""
    from raylam.tune import load_sweep

    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  model:\n    lr: 3e-4\n  steps: 1e3\n"
                    "tune:\n  space:\n    model.sup_coef: {loguniform: [1e-4, 1.0]}\n")
    experiment, sweep = load_sweep(path)
    assert experiment.train.model.lr == pytest.approx(3e-4)
    assert experiment.train.steps == 1000 and isinstance(experiment.train.steps, int)
    assert sweep.space == {"model.sup_coef": {"loguniform": [1e-4, 1.0]}}
    cfg = load_experiment(path, ["train.model.lr=5e-5", "collect.env.ground_alpha=.5e-1", "train.steps=2E2"])
    assert cfg.train.model.lr == pytest.approx(5e-5) and cfg.train.steps == 200
    assert cfg.collect.env.ground_alpha == pytest.approx(0.05)
    _, sweep = load_sweep(path, ['tune.space={"model.sup_coef": {loguniform: [1e-3, 1e-1]}}'])
    assert sweep.space["model.sup_coef"]["loguniform"] == [1e-3, 1e-1]
    with pytest.raises(ConfigError, match=r"train.steps: got 2.5 \(float\), expected an integer"):
        load_experiment(path, ["train.steps=2.5"])
    # a quoted value stays a string, and a string is still refused where a number belongs
    with pytest.raises(ConfigError, match="train.model.lr: got '3e-4' \\(str\\), expected a number"):
        load_experiment(path, ["train.model.lr='3e-4'"])


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    """Every file in configs/ resolves, with each stage of each seed built and validated."""
    from raylam.tune import load_sweep

    experiment, _ = load_sweep(path)
    for seed in experiment.seed_list():
        for i in range(len(experiment.stages)):
            assert experiment.stage(i, seed).run_name == experiment.stages[i]["run_name"]


def test_a_config_holds_its_differences_from_a_base(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text(
        "name: base\ncollect: {episodes: 4, num_labeled: 2}\n"
        "train: {steps: 10, report_every: 5, checkpoint_every: 5, model: {lr: 1e-3, latent_dim: 32}}\n"
        "stages:\n  - {run_name: lam, stage: lam, model: {method: laom_sup}}\n"
        "  - {run_name: bc, stage: bc, model: {method: bc}}\n"
        "evaluate: {methods: [{name: bc, policy: bc}], probe: {batch_size: 64}}\n")
    derived = tmp_path / "sub" / "derived.yaml"
    derived.write_text("base: ../base.yaml\nname: derived\ntrain: {model: {latent_dim: 16}}\n"
                       "stages:\n  lam: {steps: 20, model: {sup_coef: 0.5}}\nevaluate: null\n")
    cfg = load_experiment(derived)
    assert cfg.name == "derived" and cfg.collect.episodes == 4
    assert cfg.train.model.lr == pytest.approx(1e-3) and cfg.train.model.latent_dim == 16  # mappings merge
    lam, bc = cfg.stage(0), cfg.stage(1)
    assert (lam.steps, lam.model.sup_coef, lam.model.method) == (20, 0.5, "laom_sup")  # one stage edited
    assert (bc.steps, bc.model.method) == (10, "bc")
    assert cfg.evaluate.methods == [] and cfg.evaluate.probe.batch_size == 256  # `null`: the defaults again
    # a list replaces the base's stages
    derived.write_text("base: ../base.yaml\nstages: [{run_name: only, stage: bc, model: {method: bc}}]\n"
                       "evaluate: {methods: [{name: bc, policy: only}]}\n")
    cfg = load_experiment(derived)
    assert [s["run_name"] for s in cfg.stages] == ["only"] and cfg.evaluate.probe.batch_size == 64
    # a chain of bases
    (tmp_path / "third.yaml").write_text("base: sub/derived.yaml\nname: third\n")
    assert load_experiment(tmp_path / "third.yaml").stages[0]["run_name"] == "only"


@pytest.mark.parametrize("text, message", [
    ("base: nope.yaml\n", "base: .*nope.yaml does not exist"),
    ("base: loop.yaml\n", "leads back to itself"),
    ("base: [a]\n", "base: got \\['a'\\], expected the path"),
    ("base: other.yaml\nstages: {lamm: {steps: 3}}\n", "stages.lamm: no stage 'lamm'; stages: lam"),
    ("stages: {lam: {steps: 3}}\n", "this file names no `base`"),
])
def test_base_file_errors(tmp_path, text, message):
    (tmp_path / "other.yaml").write_text("stages: [{run_name: lam, stage: lam}]\n")
    path = tmp_path / "loop.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_experiment(path)


def test_one_stage_overridden_from_the_command_line():
    cfg = load_experiment(QUICKSTART, ["stages.laom_sup.model.sup_coef=0.5", "train.steps=7",
                                       "stages.laom.steps=9"])
    names = [s["run_name"] for s in cfg.stages]
    by_name = {name: cfg.stage(i) for i, name in enumerate(names)}
    assert by_name["laom_sup"].model.sup_coef == 0.5 and by_name["laom_sup"].steps == 7
    assert by_name["laom"].steps == 9  # stages.<name>.* beats train.*
    file_value = load_experiment(QUICKSTART).train.model.sup_coef
    assert by_name["lapo"].steps == 7 and by_name["laom_sup_bc"].model.sup_coef == file_value != 0.5
    with pytest.raises(ConfigError, match="override stages.laomx: no stage 'laomx'"):
        load_experiment(QUICKSTART, ["stages.laomx.steps=3"])
    with pytest.raises(ConfigError, match=r"stages\[0\] \(laom_sup\): model.sup_coef: got -1"):
        load_experiment(QUICKSTART, ["stages.laom_sup.model.sup_coef=-1"])


def test_a_relabel_stage_has_its_own_config():
    """Relabeling trains nothing: the shared training batch, worker count and step budget never
    reach it; it takes the dataset, storage, GPU use and decode settings, and its own fields."""
    from raylam.train.config import RelabelConfig, TrainConfig

    cfg = load_experiment(QUICKSTART, ["train.batch_size=64", "train.num_workers=2", "train.steps=50",
                                       "train.use_gpu=true", "train.data.read_cpus=0.5"])
    labels = cfg.stage(cfg.stage_index("laom_sup_labels"))
    assert isinstance(labels, RelabelConfig) and isinstance(cfg.stage(0), TrainConfig)
    assert labels.batch_size == 128  # the stage's own inference batch (quickstart.yaml), not train.batch_size
    assert labels.max_actors == 1 and labels.use_gpu and labels.data.read_cpus == 0.5
    assert labels.lam_run == "runs/quickstart/laom_sup" and labels.storage_path == "runs/quickstart"
    assert cfg.stage(0).batch_size == 64 and cfg.stage(0).num_workers == 2
    wider = load_experiment(QUICKSTART, ["stages.laom_sup_labels.max_actors=4"])
    assert wider.stage(wider.stage_index("laom_sup_labels")).max_actors == 4
    with pytest.raises(ConfigError, match=r"stages\[\d+\] \(laom_sup_labels\).*steps"):
        load_experiment(QUICKSTART, ["stages.laom_sup_labels.steps=10"])  # a training field: not relabel's


def test_library_code_never_calls_ray_init():
    """Connecting is the entry point's business (the CLI, through raylam.cluster.connect); library
    functions use Ray's own connect-on-first-use, so a caller's ray.init(...) is never overridden."""
    import ast

    root = Path(__file__).resolve().parents[1] / "raylam"
    callers = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "init" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "ray":
                callers.add(path.relative_to(root).as_posix())
    assert callers == {"cluster.py"}


def test_relabel_cpu_needs_decide_what_runs_at_once():
    """The pipeline starts a relabel beside another only when both fit the CPUs (pipeline.relabel_need):
    the quickstart's relabels take one CPU each, so two run at once on its 2-CPU machine; a relabel
    at the defaults holds two, so a second one waits instead of deadlocking."""
    from raylam.pipeline import relabel_need

    exp = load_experiment(QUICKSTART)
    needs = {entry["run_name"]: relabel_need(exp.stage(i)) for i, entry in enumerate(exp.stages)}
    assert needs["laom_sup_labels"] == needs["idm_labels"] == 1.0
    assert needs["laom_sup"] == needs["bc"] == 0.0  # training stages are not gated
    defaults = load_experiment(QUICKSTART, ["stages.laom_labels.cpus_per_actor=1", "stages.laom_labels.data.read_cpus=1"])
    assert relabel_need(defaults.stage([s["run_name"] for s in defaults.stages].index("laom_labels"))) == 2.0
