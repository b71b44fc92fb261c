"""Tests for srel.io: atomic writes (also under SIGKILL), leftover temporaries, checked reads."""
import os
import pickle
import signal
import subprocess
import sys

import numpy as np
import pytest

from srel import io
from srel.results import load_results, result_paths

# A child that writes a pickle and SIGKILLs itself inside the write, after half the bytes reached
# the temporary file and before the rename: the worst moment for a reader.
KILL_INSIDE_WRITE = """
import os, signal, sys
from srel import io

def fsync(fd):
    os.ftruncate(fd, os.fstat(fd).st_size // 2)
    os.kill(os.getpid(), signal.SIGKILL)

os.fsync = fsync
io.save_pickle({"new": list(range(100_000))}, sys.argv[1])
"""


def _temporaries(folder):
    return sorted(p.name for p in folder.glob(".*.tmp"))


def _reaped() -> int:
    """The id of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


class TestAtomicWrite:
    def test_writes_bytes_with_umask_permissions_and_no_temporary(self, tmp_path):
        """The target holds the bytes, readable as a plain open() would make it; nothing else."""
        path = io.atomic_write_bytes(tmp_path / "sub" / "a.bin", b"abc")
        assert path.read_bytes() == b"abc"
        umask = os.umask(0)
        os.umask(umask)
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
        assert os.listdir(path.parent) == ["a.bin"]

    def test_relative_path_resolves_against_repository(self):
        assert io.resolve_path("Assets/x.pkl") == io.REPO_ROOT / "Assets" / "x.pkl"

    def test_failing_write_keeps_old_file_and_leaves_no_temporary(self, tmp_path):
        """An exception halfway through the write leaves the previous file untouched."""
        path = io.save_pickle({"old": 1}, tmp_path / "r.pkl")

        def write_half_then_fail(f):
            f.write(b"\x80\x05partial")
            raise OSError("disk full")

        with pytest.raises(OSError, match="disk full"):
            io.atomic_write(path, write_half_then_fail)
        assert io.load_pickle(path) == {"old": 1}
        assert _temporaries(tmp_path) == []

    def test_sigkill_inside_write_keeps_old_file(self, tmp_path):
        """A writer killed before its rename leaves the old pickle intact and only a temporary;
        the next write to the folder removes that temporary."""
        path = io.save_pickle({"old": 1}, tmp_path / "r.pkl")
        proc = subprocess.run(
            [sys.executable, "-c", KILL_INSIDE_WRITE, str(path)], capture_output=True, timeout=60
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
        assert io.load_pickle(path) == {"old": 1}
        (leftover,) = tmp_path.glob(".r.pkl.*.tmp")
        assert 0 < leftover.stat().st_size < len(pickle.dumps({"new": list(range(100_000))}))
        with pytest.raises(io.ResultFileError):
            io.load_pickle(leftover)  # what a reader would have seen without the rename

        io.save_pickle({"newer": 2}, tmp_path / "other.pkl")
        assert _temporaries(tmp_path) == []
        assert io.load_pickle(path) == {"old": 1}

    def test_cleanup_keeps_temporaries_of_live_foreign_and_unknown_writers(self, tmp_path):
        """Only temporaries of exited processes on this host are removed."""
        host = io._host()
        names = {
            "dead": f".a.pkl.{host}-{_reaped()}.abc_12.tmp",
            "live": f".a.pkl.{host}-{os.getppid()}.abc_12.tmp",
            "own": f".a.pkl.{host}-{os.getpid()}.abc_12.tmp",
            "other host": f".a.pkl.{host}x-{_reaped()}.abc_12.tmp",
            "untagged": ".a.pkl.abc_12.tmp",
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"partial")
        removed = io.remove_orphaned_temporaries(tmp_path)
        assert [p.name for p in removed] == [names["dead"]]
        assert _temporaries(tmp_path) == sorted(n for k, n in names.items() if k != "dead")

    def test_save_figure_writes_png(self, tmp_path):
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        fig = Figure()
        fig.subplots().plot([0, 1], [1, 0])
        path = io.save_figure(fig, tmp_path / "f.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert _temporaries(tmp_path) == []


class TestLoadPickle:
    def test_roundtrip(self, tmp_path):
        obj = {"a": [1.5, float("nan")], "b": np.arange(3)}
        loaded = io.load_pickle(io.save_pickle(obj, tmp_path / "x.pkl"))
        assert loaded["a"][0] == 1.5 and np.isnan(loaded["a"][1])
        np.testing.assert_array_equal(loaded["b"], obj["b"])

    def test_missing_file_names_it(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="nope.pkl"):
            io.load_pickle(tmp_path / "nope.pkl")

    @pytest.mark.parametrize(
        "damage",
        [
            lambda b: b[: len(b) // 2],
            lambda b: b[:-1],
            lambda b: b"",
            lambda b: b"not a pickle at all",
            lambda b: b[:20] + bytes(len(b) - 20),
        ],
        ids=["half", "last byte missing", "empty", "text", "zeroed tail"],
    )
    def test_damaged_pickle_gives_one_clear_error_naming_the_file(self, tmp_path, damage):
        """Not a raw unpickling traceback: a ResultFileError with the path, no chained cause."""
        path = tmp_path / "x.pkl"
        path.write_bytes(damage(pickle.dumps({"values": list(range(50))}, protocol=5)))
        with pytest.raises(io.ResultFileError, match="truncated or corrupted") as info:
            io.load_pickle(path)
        assert str(path) in str(info.value)
        assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("key", ["pair_iters", "metrics", "details"])
def test_load_results_names_the_damaged_pickle(tmp_path, key):
    """A truncated result pickle is reported by name, whichever of the three it is."""
    paths = result_paths(tmp_path, "digits", "kl")
    pair_iters = [[[0.5, 0.6]] * 4]  # 1 run, 2x2 class pairs, 2 measurements
    metrics = {k: [[1.0]] for k in ("train_accs", "train_losses", "test_accs", "test_losses")}
    io.save_pickle(pair_iters, paths["pair_iters"])
    io.save_pickle(metrics, paths["metrics"])
    io.save_pickle({"pair_values": np.zeros((1, 2, 2, 2, 1, 1))}, paths["details"])
    assert load_results(tmp_path, "digits", "kl")["pair_iters"] == pair_iters

    data = paths[key].read_bytes()
    paths[key].write_bytes(data[: len(data) // 2])
    with pytest.raises(io.ResultFileError, match=paths[key].name):
        load_results(tmp_path, "digits", "kl")
