"""Smoke test of benchmarks/paper.py: the quick mode runs and reports every row."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "paper.py"


@pytest.mark.slow
def test_quick_mode_reports_every_model(tmp_path):
    pytest.importorskip("mlxtend")
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import paper
    finally:
        sys.path.remove(str(SCRIPT.parent))
    out = tmp_path / "results.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    args = ["--quick", "--hidden", "64", "--train-size", "400", "--test-size", "200"]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = out.read_text()
    for name, _ in paper.MODELS:
        assert f"| {name} |" in result.stdout
        assert f"| {name} |" in report
    assert "Recommended default" in report
    assert (tmp_path / "figures" / "contraction.png").stat().st_size > 0
    assert (tmp_path / "figures" / "spectra.png").stat().st_size > 0
