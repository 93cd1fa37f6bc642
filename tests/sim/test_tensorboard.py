"""``phalanx sim --tensorboard DIR``: each metrics row's scalars as TensorBoard events, read back with
tensorboard's own EventAccumulator; without the package, one error line and exit status 2."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from phalanx.cli import main

HAVE_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
needs_tensorboard = pytest.mark.skipif(
    not HAVE_TENSORBOARD,
    reason="the tensorboard package (optional extra phalanx[tensorboard]) is not installed",
)

SMALL = [
    "--dataset",
    "blobs",
    "--nodes",
    "6",
    "--rounds",
    "4",
    "--topology",
    "ring",
    "--eval-every",
    "2",
    "--no-progress",
    "--no-plots",
]


def status(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the event files in ``folder``: (step, value) pairs in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list(folder.glob("events.out.tfevents.*")), f"no event file in {folder}"
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@needs_tensorboard
def test_writer_writes_each_rows_scalars_at_its_round(tmp_path: Path) -> None:
    from phalanx.node.tensorboard import open_writer

    rows = [
        {"round": 0, "acc_mean": None, "acc_avg": None, "consensus": 0.5, "bytes": 1000, "live": 4},
        {"round": 1, "acc_mean": 0.25, "acc_min": 0.125, "acc_max": 0.375, "acc_avg": 0.5, "loss_mean": 2.0},
        {"round": 2, "consensus": 0.25, "bytes": 3000, "loss_avg": float("nan"), "counters": {"x": 1}},
    ]
    with open_writer(tmp_path / "tb") as writer:
        for row in rows:
            writer.write(row)
    got = scalars(tmp_path / "tb")
    assert got["accuracy/mean"] == [(1, 0.25)]
    assert got["accuracy/min"] == [(1, 0.125)] and got["accuracy/max"] == [(1, 0.375)]
    assert got["accuracy/avg"] == [(1, 0.5)]
    assert got["loss/mean"] == [(1, 2.0)]
    assert got["consensus"] == [(0, 0.5), (2, 0.25)]
    assert got["bytes"] == [(0, 1000.0), (2, 3000.0)]
    assert got["live"] == [(0, 4.0)]
    assert got["loss/avg"][0][0] == 2 and got["loss/avg"][0][1] != got["loss/avg"][0][1]  # NaN kept
    assert "counters" not in got and not any(tag.startswith("round") for tag in got)


@needs_tensorboard
def test_sim_flag_writes_the_metrics_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, board = tmp_path / "run", tmp_path / "tb"
    assert main(["sim", *SMALL, "--out", str(out), "--tensorboard", str(board)]) == 0
    assert f"wrote TensorBoard events to {board / 'run'}/" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    got = scalars(board / "run")
    for key, tag in (("consensus", "consensus"), ("bytes", "bytes"), ("acc_mean", "accuracy/mean")):
        expected = [(r["round"], float(r[key])) for r in rows if r.get(key) is not None]
        assert len(expected) >= 2
        assert [s for s, _ in got[tag]] == [s for s, _ in expected]
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in expected], rel=1e-6)
    assert {"accuracy/min", "accuracy/max", "accuracy/avg", "loss/mean"} <= set(got)


@needs_tensorboard
def test_config_key_and_seeds_write_one_run_folder_per_seed(tmp_path: Path) -> None:
    board = tmp_path / "tb"
    path = tmp_path / "c.toml"
    path.write_text(f'tensorboard = "{board.as_posix()}"\n')
    out = tmp_path / "study"
    assert main(["sim", "--config", str(path), *SMALL, "--seeds", "0,1", "--out", str(out)]) == 0
    for seed in (0, 1):
        rows = [json.loads(x) for x in (out / f"seed-{seed}" / "metrics.jsonl").read_text().splitlines()]
        got = scalars(board / "study" / f"seed-{seed}")
        assert got["consensus"] == [(r["round"], pytest.approx(r["consensus"], rel=1e-6)) for r in rows]


def test_without_the_package_one_error_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    out = tmp_path / "run"
    assert status(["sim", *SMALL, "--out", str(out), "--tensorboard", str(tmp_path / "tb")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "phalanx sim: error: --tensorboard needs the tensorboard package: "
        "pip install 'phalanx[tensorboard]' (or pip install 'tensorboard>=2.14')"
    ]
    assert not (tmp_path / "tb").exists() and not (out / "metrics.jsonl").exists()  # refused before training


def test_a_bad_config_value_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text("tensorboard = 3\n")
    assert status(["sim", "--config", str(path), *SMALL, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["phalanx sim: error: tensorboard must be a folder path (a string), got 3"]


def test_node_run_without_the_package_is_one_error_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    argv = ["node", "run", "--dataset", "blobs", "--model", "logreg", "--data-dir", str(tmp_path / "n")]
    assert status([*argv, "--alone", "train", "--rounds", "1", "--tensorboard", str(tmp_path / "tb")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tensorboard needs the tensorboard package" in err[0]


@needs_tensorboard
def test_a_node_writes_its_round_lines_as_events(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from phalanx.node.tensorboard import NODE_TAGS, open_writer

    with open_writer(tmp_path / "node", NODE_TAGS) as board:
        board.write({"round": 1, "accuracy": 0.5, "loss": 1.0, "bytes_in": 10, "bytes_out": 20, "peers": 2})
        board.write({"round": 2, "accuracy": None, "bytes_in": 30})
    events = EventAccumulator(str(tmp_path / "node"))
    events.Reload()
    assert [e.value for e in events.Scalars("accuracy")] == [0.5]
    assert [e.step for e in events.Scalars("bytes/in")] == [1, 2]
