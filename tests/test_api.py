"""The Python API: in-memory models, data and losses in the simulator and on a real node; the same run as
``phalanx sim``; what config.toml records; a quick ``import phalanx``; the quickstart example."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from torch import nn

import phalanx
from phalanx.cli import main

ROOT = Path(__file__).resolve().parents[1]
FAST = {"nodes": 4, "rounds": 3, "topology": "ring", "eval_every": 3, "threads": 1, "seed": 1}


class TinyNet(nn.Module):
    """Importable as tests.test_api:TinyNet, so the config records that path."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], 16), nn.ReLU(), nn.Linear(16, num_classes))

    def forward(self, x):
        return self.body(x)


def quadrants(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, (x[:, 0] > 0).long() * 2 + (x[:, 1] > 0).long()


def test_simulate_with_in_memory_model_data_and_loss_writes_what_ran(tmp_path):
    result = phalanx.simulate(
        model=TinyNet, dataset=quadrants(), loss_fn=nn.CrossEntropyLoss(label_smoothing=0.1),
        optimizer="adamw", lr=0.02, sam_rho=0.01, out=tmp_path / "run", **{**FAST, "rounds": 8, "eval_every": 4},
    )  # fmt: skip
    assert result.final_accuracy is not None and result.final_accuracy > 0.6  # chance is 0.25
    assert [r for r, _ in result.accuracy] == [0, 3, 7] and len(result.rows) == 8
    assert result.out == tmp_path / "run"
    written = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert written["model"] == "tests.test_api:TinyNet"  # importable: recorded by its import path
    assert written["dataset"] == "<python object: tensors (600, 6) (600,)>"
    assert written["loss_fn"] == "<python object: torch.nn.modules.loss.CrossEntropyLoss>"
    assert written["optimizer"] == "adamw" and written == result.config
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["acc_mean"] == result.final_accuracy
    assert result.summary["device"] == "cpu"  # the default; "auto" records what it resolved to here too


def test_a_local_factory_is_recorded_by_a_marker_and_nothing_is_written_without_out():
    def make(input_shape, num_classes):
        return nn.Linear(input_shape[0], num_classes)

    result = phalanx.simulate(model=make, dataset=quadrants(), **FAST)
    assert result.out is None
    assert result.config["model"].startswith("<python object: tests.test_api.")
    assert "make" in result.config["model"]


def test_the_api_and_the_cli_run_the_same_simulation(tmp_path):
    args = ["--nodes", "4", "--rounds", "3", "--topology", "ring", "--eval-every", "3", "--threads", "1"]
    assert main(["sim", "--dataset", "blobs", *args, "--seed", "1", "--out", str(tmp_path / "cli"), "--no-plots", "--no-progress"]) == 0
    cli = [json.loads(line) for line in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    api = phalanx.simulate(dataset="blobs", **FAST).rows
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]  # noqa: E731
    assert strip(api) == strip(cli)
    # the same model by import path, as an in-memory factory and as a module instance: one run
    by_path = phalanx.simulate(model="tests.test_api:TinyNet", dataset="blobs", **FAST).rows
    in_memory = phalanx.simulate(model=TinyNet, dataset="blobs", **FAST).rows
    assert strip(by_path) == strip(in_memory)


def test_a_torch_dataset_and_a_loader_function_are_datasets():
    x, y = quadrants()
    pair = torch.utils.data.TensorDataset(x[:500], y[:500]), torch.utils.data.TensorDataset(x[500:], y[500:])
    result = phalanx.simulate(model="logreg", dataset=lambda: pair, **FAST)
    assert result.config["dataset"].startswith("<python object: tests.test_api.")
    assert result.final_accuracy is not None


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"nodes": 1}, "nodes"),
        ({"optimizer": "lion"}, "unknown optimizer 'lion'"),
        ({"noodles": 3}, "unknown setting 'noodles'"),
        ({"model": 42}, "model must be"),
    ],
)
def test_a_bad_setting_is_a_value_error_before_training(settings, needle):
    with pytest.raises(ValueError, match=needle):
        phalanx.simulate(dataset="blobs", **{**FAST, **settings})


def test_import_phalanx_and_the_cli_parser_stay_free_of_torch():
    code = "import sys, phalanx; from phalanx.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    assert callable(phalanx.simulate) and callable(phalanx.run_node)


def test_the_quickstart_example_runs(tmp_path):
    done = subprocess.run(
        [sys.executable, "examples/api_quickstart.py", str(tmp_path / "q")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    accuracy = float(done.stdout.split("final accuracy ")[1].split(";")[0])
    assert accuracy > 0.7  # four classes: chance is 0.25
    assert tomllib.loads((tmp_path / "q" / "config.toml").read_text())["optimizer"] == "adamw"


class BatchNet(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(input_shape[0], 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, num_classes))

    def forward(self, x):
        return self.body(x)


@pytest.mark.network
def test_run_node_trains_alone_checkpoints_local_buffers_and_adam_state_and_resumes(tmp_path):
    from phalanx.node import checkpoint as ckpt

    common = dict(
        model=BatchNet, dataset=quadrants(), alone="train", data_dir=tmp_path, metrics_port=-1, linger=0.0,
        buffers="local", optimizer="adam", lr=0.01, local_steps=3, log=None,
    )  # fmt: skip
    result = phalanx.run_node(rounds=2, **common)
    assert result.status == 0 and [r["round"] for r in result.rounds] == [1, 2]
    assert result.final_accuracy is not None
    saved = ckpt.load(tmp_path / ckpt.FILENAME, dim=8 * 6 + 8 + 2 * 8 + 8 * 4 + 4)
    assert saved is not None and saved.steps == 6
    local = torch.frombuffer(bytearray(saved.extra["local_buffers"]), dtype=torch.float32)
    assert local.numel() == 8 + 8 + 1 and local[:8].abs().sum() > 0  # running mean, var, counter; trained
    assert len(saved.extra["adam_second"]) == 4 * saved.params.numel()
    # a resumed node restores them: a checkpoint whose local buffers do not fit is refused in one line
    saved.extra["local_buffers"] = b"\0" * 4
    ckpt.save(tmp_path / ckpt.FILENAME, saved)
    with pytest.raises(ValueError, match="no local buffers"):
        phalanx.run_node(rounds=3, **common)
