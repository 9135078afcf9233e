"""benchmarks/gpu_check.py on a CPU machine: arguments, the time budget, the summary, skipping."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import gpu_check  # noqa: E402

pytestmark = pytest.mark.reference


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only path")
def test_without_a_gpu_every_step_is_skipped_with_the_reason(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["device"] == "none" and list(s["steps"]) == gpu_check.STEPS
    assert all(r["status"] == "skipped" and "no CUDA device" in r["reason"] for r in s["steps"].values())
    assert "| build | skipped |" in capsys.readouterr().out


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--out", str(tmp_path), "--steps", "build,warp"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        gpu_check.main(["--out", str(tmp_path), "--budget-s", "0"])


def test_budget_shares_carry_over_and_a_spent_budget_stops_the_rest(tmp_path):
    now = [0.0]
    seen = {}

    def fake(spend):
        def run(out, allowed):
            seen[len(seen)] = allowed
            now[0] += spend
            return {"status": "ok", "seconds": spend}
        return run

    runners = {"build": fake(10.0), "pytest": fake(300.0), "grad_stats": fake(0.0), "h2d": fake(0.0),
               "nccl": fake(0.0), "compare": fake(0.0)}
    res = gpu_check.run_steps(gpu_check.STEPS, str(tmp_path), 400.0, runners, clock=lambda: now[0])
    assert seen[0] == pytest.approx(0.30 * 400)  # build: its share
    assert seen[1] == pytest.approx(0.15 * 400 + 110)  # pytest: its share + what build left
    assert [res[s]["status"] for s in gpu_check.STEPS] == ["ok", "ok", "ok", "ok", "ok", "ok"]
    assert all(a <= 400 for a in seen.values())
    now[0] = 0.0
    runners["build"] = fake(398.0)
    res = gpu_check.run_steps(gpu_check.STEPS, str(tmp_path), 400.0, runners, clock=lambda: now[0])
    assert res["pytest"] == {"status": "not run", "reason": "time budget spent"}
    assert json.loads((tmp_path / "pytest.json").read_text())["status"] == "not run"


def test_a_step_that_raises_is_recorded_and_the_summary_shows_figures(tmp_path):
    def boom(out, allowed):
        raise RuntimeError("CUDA error: no kernel image")

    def fine(out, allowed):
        return {"status": "ok", "seconds": 1.0, "figures": {"bert-base accumulate": {"vs_foreach": 1.5,
                                                                                    "bandwidth_share": 0.9}}}
    res = gpu_check.run_steps(["build", "grad_stats"], str(tmp_path), 100.0, {"build": boom, "grad_stats": fine})
    assert res["build"]["status"] == "failed" and "no kernel image" in res["build"]["error"]
    md = open(gpu_check.write_summary(res, str(tmp_path), "NVIDIA H200")).read()
    assert "GPU check on NVIDIA H200" in md and "1.50x foreach, 90% of copy" in md and "| build | failed |" in md
