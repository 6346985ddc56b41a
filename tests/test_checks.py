"""Everything a command will touch is checked before work starts: one clear line, exit status 2.

These run the real `raylam` entry point in-process; none of them gets as far as starting Ray."""

import json
import socket
from pathlib import Path

import pytest

from raylam.cli import main
from raylam.config import ConfigError
from raylam.data.synthetic import write_synthetic_dataset
from raylam.experiment import load_experiment

QUICKSTART = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")


def fails_with(capsys, argv: list[str], message: str) -> str:
    """``raylam ARGV`` exits 2 with one line on stderr that contains ``message``."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert message in err, err
    return err


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("checks") / "data"
    write_synthetic_dataset(str(out), episodes=3, episode_length=20, image_size=32, clip_length=12, overlap=4,
                            num_labeled=2)
    return str(out)


def test_a_typo_in_evaluate_methods_fails_at_load(capsys, tmp_path):
    typo = 'evaluate.methods=[{name: laom_sup, lam: laom_supp, policy: laom_sup_bc, decoder: laom_sup_decoder}]'
    fails_with(capsys, ["pipeline", "--config", QUICKSTART, typo, f"train.storage_path={tmp_path}"],
               "evaluate.methods[0] (laom_sup).lam: 'laom_supp' is not a stage of this experiment")
    wrong_kind = 'evaluate.methods=[{name: x, lam: laom_sup, policy: laom_sup_decoder}]'
    with pytest.raises(ConfigError, match=r"\.policy: stage 'laom_sup_decoder' is a action_decoder stage"):
        load_experiment(QUICKSTART, [wrong_kind])


def test_evaluate_names_a_run_that_does_not_exist(capsys, tmp_path):
    fails_with(capsys, ["evaluate", "--config", QUICKSTART, f"train.storage_path={tmp_path}"],
               f"evaluate.methods[0] (laom_sup).lam: {tmp_path}/quickstart/laom_sup is not a finished run")
    fails_with(capsys, ["evaluate"], "give --config FILE")


def test_background_dir_must_exist(capsys, tmp_path):
    fails_with(capsys, ["collect", "--config", QUICKSTART, f"collect.output={tmp_path}/d",
                        f"collect.env.background_dir={tmp_path}/davis"],
               f"collect.env.background_dir: folder {tmp_path}/davis does not exist")
    fails_with(capsys, ["pipeline", "--config", QUICKSTART, f"collect.output={tmp_path}/d",
                        f"train.storage_path={tmp_path}/runs", f"evaluate.rollout.background_dir=file://{tmp_path}/v"],
               f"evaluate.rollout.background_dir: folder file://{tmp_path}/v does not exist")


def test_label_budget_larger_than_the_dataset(capsys, dataset, tmp_path):
    fails_with(capsys, ["train", "--config", QUICKSTART, f"train.dataset={dataset}", "train.num_labeled=5",
                        f"train.storage_path={tmp_path}"],
               f"stages[0] (laom_sup).num_labeled: got 5, but dataset {dataset} has 2 labeled episodes")


def test_empty_or_missing_config(capsys, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    fails_with(capsys, ["train", "--config", str(empty)], f"config file {empty} is empty")
    fails_with(capsys, ["collect", "--config", str(tmp_path / "nope.yaml")], "does not exist")
    with pytest.raises(SystemExit) as exit_:  # argparse: usage and "the following arguments are required"
        main(["collect", "collect.episodes=2"])
    assert exit_.value.code == 2
    assert "--config" in capsys.readouterr().err


def test_output_path_that_is_a_file(capsys, tmp_path):
    file = tmp_path / "taken"
    file.write_text("x")
    fails_with(capsys, ["collect", "--config", QUICKSTART, f"collect.output={file}"],
               f"collect.output: {file} is a file; expected a directory")
    fails_with(capsys, ["train", "--config", QUICKSTART, f"train.storage_path={file}/runs"],
               f"train.storage_path: {file}/runs lies under {file}, which is a file")
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"rows": []}))
    fails_with(capsys, ["report", str(results), "--output", str(file)], f"--output: {file} is a file")


def test_unreachable_s3_is_one_line(capsys, monkeypatch, tmp_path):
    with socket.socket() as s:  # a port nothing listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    fails_with(capsys, ["collect", "--config", QUICKSTART, "collect.output=s3://raylam-nobucket/data"],
               "collect.output: cannot reach s3://raylam-nobucket/data:")


def test_internal_errors_keep_their_traceback(monkeypatch, tmp_path):
    """A ValueError that is not a user error is a bug: main() lets it through instead of one flat line."""
    import raylam.eval.report as report

    def broken(runs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(report, "merge_results", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["report", str(tmp_path), "--output", str(tmp_path / "out")])


def test_a_model_that_does_not_fit_the_dataset_fails_before_ray(capsys, dataset, tmp_path):
    """Frame size and window overlap are checked against the dataset's manifest up front: one line
    naming the stage's model, not a traceback from the stage's task once Ray has started."""
    common = ["train", "--config", QUICKSTART, f"train.dataset={dataset}", f"train.storage_path={tmp_path}",
              "train.num_labeled=2"]
    fails_with(capsys, [*common, "train.model.image_size=64"],
               f"stages[0] (laom_sup).model: dataset {dataset} has 32x32 frames, model.image_size is 64")
    fails_with(capsys, [*common, "train.model.image_size=32", "train.model.max_offset=8"],
               f"stages[0] (laom_sup).model: dataset {dataset} has clips overlapping by 4 frames; windows with "
               "frame_stack 3 and max_offset 8 need >= 10")


def test_a_dataset_is_read_once_for_all_its_stages(dataset, monkeypatch, tmp_path):
    """Sixteen stages on one dataset: its manifest is read once before Ray starts, not three times a
    stage (on object storage each read is a round trip)."""
    import raylam.data.pipeline as pipeline
    from raylam.checks import check_experiment

    reads = []
    real = pipeline.load_manifest
    monkeypatch.setattr(pipeline, "load_manifest", lambda location: reads.append(location) or real(location))
    exp = load_experiment(QUICKSTART, [f"train.dataset={dataset}", f"train.storage_path={tmp_path}", "train.num_labeled=2",
                                       "train.model.image_size=32", "train.model.max_offset=1"])
    assert len({exp.stage(i).dataset for i in range(len(exp.stages))}) == 1 and len(exp.stages) > 1
    check_experiment(exp, "train")
    assert len(reads) == 1
