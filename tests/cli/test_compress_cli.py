"""``--compress`` and the ``--dp-*`` flags on sim, node run and net up: bad values are one line and exit 2;
a good sim run reports epsilon in its summary (issue 18)."""

from __future__ import annotations

import json

import pytest

from phalanx.cli import main

SMALL = ["--dataset", "blobs", "--nodes", "6", "--rounds", "2", "--no-plots", "--no-progress"]


@pytest.mark.parametrize(
    ("command", "argv", "match"),
    [
        (["sim", *SMALL], ["--compress", "topk"], "needs a fraction"),
        (["sim", *SMALL], ["--compress", "zip"], "unknown codec 'zip'"),
        (["sim", *SMALL], ["--dp-sigma", "1"], "--dp-clip"),
        (["sim", *SMALL], ["--dp-clip", "1", "--dp-sigma", "1", "--dp-epsilon", "3"], "give one"),
        (["node", "run", "--rounds", "1"], ["--compress", "int8:3"], "int8"),
        (["node", "run"], ["--dp-clip", "1", "--dp-epsilon", "3"], "--rounds"),
        (["net", "up", "--nodes", "2", "--rounds", "1"], ["--compress", "lowrank:x"], "not an integer"),
    ],
)
def test_bad_compression_or_privacy_settings_are_one_line_and_exit_2(
    command, argv, match, tmp_path, capsys
) -> None:
    try:
        code = main([*command, *argv, *(["--out", str(tmp_path / "run")] if command[0] != "node" else [])])
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and match in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_private_compressed_sim_reports_epsilon(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["--compress", "int8", "--dp-clip", "1", "--dp-epsilon", "8"]
    assert main(["sim", *SMALL, "--out", str(out), *argv]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert abs(summary["dp_epsilon"] - 8) < 0.2 and summary["dp_delta"] == 1e-5
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("dp_epsilon" in r for r in rows)
