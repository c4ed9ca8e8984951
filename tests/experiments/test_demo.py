"""`shardtwin demo`, the README's main job: a simulated crash, the same scenario replayed in real
browsers, both stored in one DuckDB file and printed side by side."""

from __future__ import annotations

import shutil

import pytest

from events.store import Store
from experiments.cli import main


def _runs(db: str) -> list:
    with Store(db) as st:
        return st.runs()


def test_demo_sim_only_stores_the_prediction_and_says_the_real_run_was_skipped(tmp_path, capsys):
    db = str(tmp_path / "demo.duckdb")
    assert main(["demo", "--sim-only", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "real run skipped: --sim-only" in out
    (run,) = _runs(db)
    assert run.source == "sim"
    assert run.status == "finished" and run.result["requests"]["completed"] == 60


@pytest.mark.browser
@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("firefox-esr")), reason="browsers not installed")
def test_demo_predicts_then_replays_the_crash_in_real_browsers(tmp_path, capsys):
    """Both runs of the one scenario are stored (sim and real, same scenario hash); the real Firefox
    really crashed and the run recovered; the table puts prediction next to measurement."""
    db = str(tmp_path / "demo.duckdb")
    assert main(["demo", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "sim (predicted)" in out and "real (measured)" in out
    runs = {str(r.source): r for r in _runs(db)}
    assert set(runs) == {"sim", "real"}
    sim, real = runs["sim"], runs["real"]
    assert sim.scenario_hash == real.scenario_hash
    assert real.status == "finished"
    assert real.result["requests"]["completed"] == 60 and real.result["requests"]["failed"] == 0
    assert real.result["recovery_metrics"]["recovery_success_rate"] == 1.0
    with Store(db) as st:
        crashed = st.con.execute("select count(*) from events where run_id = ? and kind = 'browser_crashed'",
                                 [real.run_id]).fetchone()[0]
    assert crashed >= 1
