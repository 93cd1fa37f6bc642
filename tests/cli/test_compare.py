"""``phalanx compare RUN_DIR...``: one table and overlaid figures; a bad folder is one line and exit 2."""

from __future__ import annotations

import csv

import pytest

from phalanx.cli import main
from phalanx.sim.config import SimConfig
from phalanx.sim.experiment import plan, run
from phalanx.sim.report import seed_dir, write_run, write_seed_dirs

TINY = {"dataset": "blobs", "nodes": 6, "rounds": 3, "topology": "ring", "eval_every": 1}


def status(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two single runs that differ in their rule, and a seed group of the first."""
    root = tmp_path_factory.mktemp("runs")
    for name, rule in (("mean", "mean"), ("median", "median")):
        write_run(run(plan(SimConfig(**TINY, name=name, rule=rule))), root / name, plots=False)
    for s in (0, 1):
        write_run(
            run(plan(SimConfig(**TINY, name="seeds", seed=s))), seed_dir(root / "seeds", s), plots=False
        )
    write_seed_dirs(root / "seeds", [0, 1], plots=False)
    return root


def test_table_and_overlaid_figures(runs, tmp_path, capsys) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", str(runs / "mean"), str(runs / "median"), str(runs / "seeds"), "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["run", "rule"]  # the setting that differs is a column
    assert [line.split()[:2] for line in lines[2:5]] == [
        ["mean", "mean"],
        ["median", "median"],
        ["seeds", "mean"],
    ]
    assert " ± " in lines[4] and " ± " not in lines[2]
    with open(out / "compare.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == ["mean", "median", "seeds"] and rows[2]["seeds"] == "2"
    for metric in ("accuracy", "loss", "consensus"):
        for axis in ("round", "bytes", "time"):
            assert (out / f"compare_{metric}_vs_{axis}.png").stat().st_size > 10_000
            assert (out / f"compare_{metric}_vs_{axis}.pdf").is_file()
    assert (out / "table.txt").read_text().startswith(lines[0])


def test_labels_and_same_folder_names(runs, capsys) -> None:
    a, b = seed_dir(runs / "seeds", 0), seed_dir(runs / "seeds", 1)
    assert main(["compare", str(a), str(b), "--no-plots"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]] == ["seed-0", "seed-1"]
    assert main(["compare", str(a), str(runs / "median"), "--labels", "x,y", "--no-plots"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]] == ["x", "y"]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda root, tmp: [str(tmp / "absent")], "is not a run folder (no such folder)"),
        (lambda root, tmp: [str(root)], "lacks config.toml, metrics.jsonl, summary.json"),
        (
            lambda root, tmp: [str(root / "mean"), str(root / "median"), "--labels", "only-one"],
            "--labels gives 1",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys, make, match) -> None:
    assert status(["compare", *make(runs, tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("phalanx compare: error:") and match in err
    assert not (tmp_path / "o").exists()


def test_a_damaged_metrics_file_is_one_line(runs, tmp_path, capsys) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("config.toml", "summary.json"):
        (bad / name).write_bytes((runs / "mean" / name).read_bytes())
    (bad / "metrics.jsonl").write_text('{"round": 0}\n{"round": 1, "acc_mean": 0.5\n')
    assert status(["compare", str(runs / "mean"), str(bad), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not valid JSON" in err


def test_a_non_empty_out_folder_is_refused_unless_overwrite(runs, tmp_path, capsys) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    argv = ["compare", str(runs / "mean"), str(runs / "median"), "--out", str(tmp_path)]
    assert status(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert status([*argv, "--overwrite"]) == 0
    assert (tmp_path / "keep.txt").read_text() == "mine" and (tmp_path / "compare.csv").is_file()
