"""Run folders: refused when not empty, read back strictly, seeds folded into mean and std, figures for print."""

from __future__ import annotations

import json
import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from phalanx.sim.config import ConfigError, SimConfig
from phalanx.sim.experiment import plan, run
from phalanx.sim.report import (
    aggregate_rows,
    aggregate_summaries,
    check_out_dir,
    mean_std,
    numbered,
    read_run,
    seed_dir,
    summary_table,
    write_run,
    write_seed_dirs,
)

TINY = {"dataset": "blobs", "nodes": 6, "rounds": 3, "topology": "ring", "eval_every": 1}


def test_out_dir_absent_or_empty_is_fine(tmp_path) -> None:
    check_out_dir(tmp_path / "new", overwrite=False)
    check_out_dir(tmp_path, overwrite=False)


def test_out_dir_not_empty_is_refused_unless_overwrite(tmp_path) -> None:
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"not empty \(metrics\.jsonl\); pass --overwrite") as info:
        check_out_dir(tmp_path, overwrite=False)
    assert "\n" not in str(info.value)
    check_out_dir(tmp_path, overwrite=True)


def test_out_dir_that_is_a_file_is_refused_even_with_overwrite(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        check_out_dir(path, overwrite=True)


def test_numbered_picks_the_first_free_folder(tmp_path) -> None:
    base = tmp_path / "quickstart"
    assert numbered(base) == base
    base.mkdir()
    assert numbered(base) == base  # empty: free
    (base / "summary.json").write_text("{}")
    (tmp_path / "quickstart-2").write_text("a file")
    (tmp_path / "quickstart-3").mkdir()
    assert numbered(base) == tmp_path / "quickstart-3"


numbers = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(st.lists(numbers, min_size=1, max_size=8))
def test_mean_std_is_the_sample_standard_deviation(values) -> None:
    mean, std = mean_std(values)
    assert math.isclose(mean, statistics.fmean(values), rel_tol=1e-9, abs_tol=1e-6)
    expected = statistics.stdev(values) if len(values) > 1 else 0.0
    assert math.isclose(std, expected, rel_tol=1e-6, abs_tol=1e-6)


@given(st.lists(st.lists(numbers, min_size=3, max_size=3), min_size=1, max_size=5))
def test_aggregate_rows_is_mean_and_std_per_round_and_key(seeds) -> None:
    per_seed = [[{"round": r, "acc_mean": v, "bytes": 7} for r, v in enumerate(values)] for values in seeds]
    rows = aggregate_rows(per_seed)
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r, row in enumerate(rows):
        column = [values[r] for values in seeds]
        assert row["seeds"] == len(seeds)
        assert (row["acc_mean"], row["acc_mean_std"]) == mean_std(column)
        assert (row["bytes"], row["bytes_std"]) == (7, 0.0)


def test_aggregate_rows_skips_missing_values_and_tables() -> None:
    a = [{"round": 0, "acc_mean": None, "consensus": 1.0, "counters": {"x": 1}, "note": "a"}]
    b = [{"round": 0, "acc_mean": None, "consensus": 3.0, "counters": {"x": 2}, "note": "b"}, {"round": 1}]
    rows = aggregate_rows([a, b])
    assert rows[0]["acc_mean"] is None and "acc_mean_std" not in rows[0]
    assert rows[0]["consensus"] == 2.0 and rows[0]["consensus_std"] == pytest.approx(math.sqrt(2))
    assert "counters" not in rows[0] and "note" not in rows[0]
    assert rows[1] == {"round": 1, "seeds": 1}  # a round only one seed reached


def test_aggregate_summaries_keeps_each_seed() -> None:
    info = aggregate_summaries(
        [{"name": "r", "acc_min": 0.2, "byzantine": [1]}, {"name": "r", "acc_min": 0.4, "byzantine": [3]}],
        [0, 1],
    )
    assert info["seeds"] == [0, 1] and info["acc_min"] == pytest.approx(0.3)
    assert info["acc_min_std"] == pytest.approx(math.sqrt(0.02))
    assert [r["byzantine"] for r in info["runs"]] == [[1], [3]] and "byzantine" not in info


def test_table_shows_mean_plus_minus_std() -> None:
    text = summary_table(
        [{"name": "r", "acc_mean": 0.5, "acc_mean_std": 0.25, "bytes": 2e6, "bytes_std": 1e6}]
    )
    assert "0.5000 ± 0.2500" in text and "2.0 ± 1.0" in text


def _run_folder(tmp_path, name="run", **kw):
    result = run(plan(SimConfig(**{**TINY, "name": name, **kw})))
    out = tmp_path / name
    write_run(result, out, plots=False)
    return result, out


def test_read_run_gives_back_what_write_run_wrote(tmp_path) -> None:
    result, out = _run_folder(tmp_path)
    folder = read_run(out)
    assert folder.name == "run" and folder.config["nodes"] == 6
    assert [r["round"] for r in folder.rows] == [r["round"] for r in result.rows]
    assert folder.summary["acc_mean"] == result.rows[-1]["acc_mean"]


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda p: (p / "summary.json").unlink(), "lacks summary.json"),
        (lambda p: (p / "metrics.jsonl").write_text("{not json\n"), "not valid JSON"),
        (lambda p: (p / "metrics.jsonl").write_text('{"round": "0"}\n'), "line 1: not a metrics row"),
        (lambda p: (p / "metrics.jsonl").write_text("[1, 2]\n"), "line 1: not a metrics row"),
        (lambda p: (p / "summary.json").write_text("[]"), "not a JSON object"),
        (lambda p: (p / "config.toml").write_text("x = = 1"), "not valid TOML"),
        (lambda p: (p / "config.toml").write_bytes(b"\xff\xfe"), "not valid TOML"),
    ],
)
def test_read_run_refuses_a_damaged_folder_in_one_line(tmp_path, damage, match) -> None:
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.toml").write_text('name = "r"\n')
    (out / "metrics.jsonl").write_text('{"round": 0}\n')
    (out / "summary.json").write_text("{}")
    read_run(out)
    damage(out)
    with pytest.raises(ConfigError, match=match) as info:
        read_run(out)
    assert "\n" not in str(info.value)


def test_seed_dirs_fold_into_mean_and_std(tmp_path) -> None:
    out = tmp_path / "group"
    seeds = [0, 1, 2]
    finals = []
    for s in seeds:
        result = run(plan(SimConfig(**{**TINY, "name": "group", "seed": s})))
        write_run(result, seed_dir(out, s), plots=False)
        finals.append(result.rows[-1]["acc_mean"])
    info = write_seed_dirs(out, seeds, plots=True)
    assert info["seeds"] == seeds
    assert (info["acc_mean"], info["acc_mean_std"]) == mean_std(finals)
    assert len(set(finals)) > 1  # the seeds differ, so the band is not empty
    back = read_run(out)
    assert back.rows[-1]["acc_mean_std"] == info["acc_mean_std"]
    assert json.loads((out / "summary.json").read_text())["runs"][2]["seed"] == 2
    assert (out / "accuracy_vs_round.png").is_file() and (out / "consensus_vs_time.pdf").is_file()


def test_run_figures_are_png_at_300_dpi_and_pdf_reproducible(tmp_path) -> None:
    result = run(plan(SimConfig(**TINY)))
    a, b = tmp_path / "a", tmp_path / "b"
    write_run(result, a)
    write_run(result, b)
    for metric in ("accuracy", "loss", "consensus"):
        for axis in ("round", "bytes", "time"):
            png = a / f"{metric}_vs_{axis}.png"
            dpi = Image.open(png).info["dpi"]
            assert round(dpi[0]) == 300
            pdf = (a / f"{metric}_vs_{axis}.pdf").read_bytes()
            assert pdf.startswith(b"%PDF") and b"CreationDate" not in pdf
            assert pdf == (b / f"{metric}_vs_{axis}.pdf").read_bytes()
    assert (a / "topology.png").is_file() and (a / "topology.pdf").is_file()
