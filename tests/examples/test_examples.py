"""The examples run as a user runs them: ``phalanx sim`` with ``--model``/``--dataset`` import paths from
the repository root, on small synthetic data; each stays under 40 lines."""

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from phalanx.cli import main
from phalanx.node.datasets import load_dataset
from phalanx.node.learner import Learner, TrainConfig

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("[!_]*.py"))


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machines are shared; two threads on a busy core only thrash
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_example_is_under_40_lines(path):
    assert len(path.read_text().splitlines()) < 40


def simulate(tmp_path, monkeypatch, *args):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    code = main(
        ["sim", *args, "--out", str(out), "--no-plots", "--no-progress", "--threads", "1", "--seed", "1"]
    )
    assert code == 0
    return json.loads((out / "summary.json").read_text()), tomllib.loads((out / "config.toml").read_text())


def test_cnn_with_batchnorm_on_cifar_shaped_data(tmp_path, monkeypatch):
    summary, config = simulate(
        tmp_path, monkeypatch,
        "--nodes", "4", "--rounds", "10", "--local-steps", "3", "--topology", "ring", "--batch-size", "16",
        "--lr", "0.1",
        "--model", "examples.cnn_batchnorm:SmallCNN", "--dataset", "examples.cnn_batchnorm:synthetic",
        "--eval-samples", "100",
    )  # fmt: skip
    assert summary["acc_mean"] > 0.3  # chance is 0.1
    # The written config records what ran.
    assert config["model"] == "examples.cnn_batchnorm:SmallCNN"
    assert config["dataset"] == "examples.cnn_batchnorm:synthetic"


def test_tabular_model_from_a_csv(tmp_path, monkeypatch):
    from examples.tabular_csv import write_synthetic_csv

    csv = tmp_path / "iris-like.csv"
    write_synthetic_csv(str(csv))
    summary, config = simulate(
        tmp_path, monkeypatch,
        "--nodes", "4", "--rounds", "5", "--local-steps", "5", "--topology", "ring",
        "--model", "examples.tabular_csv:tabular_net", "--dataset", f"csv:{csv}:label=species",
    )  # fmt: skip
    assert summary["acc_mean"] > 0.8  # chance is 1/3
    assert config["dataset"] == f"csv:{csv}:label=species"


def test_resnet8_learns_a_cifar_shaped_task(one_thread, monkeypatch):
    monkeypatch.chdir(ROOT)
    data = load_dataset("examples.cnn_batchnorm:synthetic")
    learner = Learner(
        dataset=data, shard=np.arange(len(data.train_y)), model="examples.resnet8:resnet8",
        config=TrainConfig(lr=0.05, batch_size=16),
    )  # fmt: skip
    # BatchNorm statistics ride along: 3 layers each of 16, 32 and 64 channels (mean, var, counter)
    assert learner.trainer.dim - learner.trainer.num_params == 3 * (33 + 65 + 129)
    before, _ = learner.evaluate()
    learner.train(45)
    after, _ = learner.evaluate()
    assert before < 0.2 and after > 0.5, (before, after)


@pytest.mark.slow
def test_resnet8_learns_in_the_simulator_with_16_nodes(tmp_path, monkeypatch):
    summary, _ = simulate(
        tmp_path, monkeypatch,
        "--nodes", "16", "--rounds", "10", "--local-steps", "2", "--topology", "regular:4", "--lr", "0.1",
        "--batch-size", "16", "--model", "examples.resnet8:resnet8", "--dataset", "examples.cnn_batchnorm:synthetic",
        "--eval-every", "10", "--eval-samples", "100", "--eval-nodes", "4",
    )  # fmt: skip
    assert summary["acc_mean"] > 0.6  # chance is 0.1; 0.8775 with this seed on one thread


def test_train_on_cifar_batches_from_disk_with_a_custom_model(tmp_path, monkeypatch, capsys):
    from tests.node.test_disk_datasets import write_cifar10_python

    write_cifar10_python(tmp_path / "cifar-10-batches-py", per_batch=16)
    monkeypatch.chdir(ROOT)
    args = ["train", "--dataset", f"cifar10:{tmp_path}", "--model", "examples.cnn_batchnorm:SmallCNN"]
    assert main([*args, "--steps", "4", "--eval-every", "4", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "dataset cifar10:" in out and "80 training samples, 16 test samples" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "--model", "nopkg_phalanx:net"], "no module named 'nopkg_phalanx'"),
        (["train", "--model", "examples.resnet8:resnet9"], "examples.resnet8 has no attribute 'resnet9'"),
        (["train", "--dataset", "examples.cnn_batchnorm:nothing"], "has no attribute 'nothing'"),
        (["train", "--dataset", "cifar10:/nonexistent/phalanx"], "/nonexistent/phalanx: not a directory"),
        (["sim", "--model", "nopkg_phalanx:net", "--no-progress"], "no module named 'nopkg_phalanx'"),
    ],
)
def test_unresolvable_specs_are_one_line_and_exit_2(args, needle, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(ROOT)
    assert main([*args, *(["--out", str(tmp_path)] if args[0] == "sim" else [])]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
