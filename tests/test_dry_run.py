import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_launcher(*args):
    return subprocess.run([sys.executable, str(ROOT / "launch" / "pretrain.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_dry_run_prints_the_paper_parameter_count():
    result = run_launcher("--stage", "1", "--model", "aria-25b", "--dry-run", "--world-size", "64", "--ep-size", "8")
    assert result.returncode == 0, result.stderr
    assert "total parameters             24,869,091,840" in result.stdout
    # routed: 28 layers x 64 experts x 3 x 2560 x 1664 = 22,900,899,840; the rest is dense
    assert "routed experts             22,900,899,840" in result.stdout
    # dense 1,968,192,000 + 6/64 of the routed experts
    assert "active parameters per token  4,115,151,360" in result.stdout
    assert "world 64, ep-size 8" in result.stdout
