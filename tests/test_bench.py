"""The S_rel benchmark script runs end to end (tiny sizes) and reports its ratios; no timings."""
import subprocess
import sys

from srel.io import REPO_ROOT


def test_quick_run_prints_ratios():
    """`--quick` exits 0, prints both ratios, and (a) matched (b) in float64."""
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_s_rel.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for line in ("ratio b/a = ", "ratio a/c = ", "(a) batched", "(b) published", "(c) floor"):
        assert line in done.stdout, done.stdout
    assert "OK" in done.stdout and "FAILED" not in done.stdout
    assert "scaling of (a):" in done.stdout
