"""Tests for srel.checkpoint with srel.training: resume after SIGKILL, corruption, new parameters.

The reference is one uninterrupted run; every interrupted run must end in the same Assets pickles
(same bytes for pair_iters and metrics, same arrays in details). Kills are deterministic: a child
process patches a hook point (the n-th file written, the n-th write before its rename, the n-th
S_rel measurement) to SIGKILL itself there. Most tests swap ResNet-18 for a tiny convolutional net
so that a run takes a fraction of a second; one test resumes the real ResNet-18 with Adam.
"""
import copy
import json
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import srel.checkpoint
import srel.io
import srel.training
from srel.checkpoint import CheckpointStore, params_tag
from srel.io import ResultFileError, load_pickle, save_pickle
from srel.results import load_results, result_paths, save_results
from srel.training import ExperimentConfig, run_experiment

TESTS = Path(__file__).resolve().parent
DEFINITIONS = ("kl", "suhe")
# 3 classes x 4 images, 3 batches per epoch, S_rel at batches 0 and 2: per run 3 epochs,
# 3 checkpoints and 6 measurements; the whole run writes 6 checkpoints, then 6 pickles.
TINY = dict(
    dataset="digits",
    train_per_class=4,
    test_per_class=2,
    epochs=3,
    runs=2,
    k=2,
    batch_size=4,
    measure_every=2,
    definitions=DEFINITIONS,
    device="cpu",
)
N_CHECKPOINTS = 6
VOLATILE = {"created", "seconds", "git_commit"}  # details entries that may differ between runs


def tiny_net(num_classes: int) -> nn.Module:
    """A normalization-free stand-in for ResNet-18: same input and output, 163 parameters."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


# ----------------------------------------------------------------------------------------------
# the child process and its kill points


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _child_main() -> None:
    """Run one experiment and save its pickles, SIGKILLing itself at the requested point.

    argv[1] is JSON: {"config", "tiny", "checkpoints", "assets", "kill": {"point", "n"}} with point
    "written" (after the n-th atomic write was renamed into place), "writing" (inside the n-th
    atomic write: half its bytes in the temporary file, before the rename) or "measure" (at the
    n-th S_rel measurement, i.e. mid-epoch after some training steps).
    """
    spec = json.loads(sys.argv[1])
    if spec["tiny"]:
        srel.training.make_resnet18 = tiny_net
    point, n = spec["kill"]["point"], spec["kill"]["n"]
    count = 0

    if point == "written":
        original_write = srel.io.atomic_write

        def atomic_write(*args):
            nonlocal count
            path = original_write(*args)
            count += 1
            if count == n:
                _die()
            return path

        srel.io.atomic_write = srel.checkpoint.atomic_write = atomic_write
    elif point == "writing":
        original_fsync = os.fsync

        def fsync(fd):
            nonlocal count
            if stat.S_ISREG(os.fstat(fd).st_mode):  # the temporary file, not its folder
                count += 1
                if count == n:
                    os.ftruncate(fd, os.fstat(fd).st_size // 2)
                    _die()
            return original_fsync(fd)

        os.fsync = fsync
    elif point == "measure":
        original_measure = srel.training.measure_s_rel

        def measure_s_rel(*args, **kwargs):
            nonlocal count
            count += 1
            if count == n:
                _die()
            return original_measure(*args, **kwargs)

        srel.training.measure_s_rel = measure_s_rel
    config = ExperimentConfig(**spec["config"])
    result = run_experiment(config, checkpoint_dir=spec["checkpoints"], verbose=True)
    save_results(result, spec["assets"])


def _run_killed(root: Path, point: str, n: int, config=TINY, tiny=True) -> str:
    """Run the child on root/checkpoints and root/assets; it must die by SIGKILL. Its stdout."""
    spec = {
        "config": config,
        "tiny": tiny,
        "checkpoints": str(root / "checkpoints"),
        "assets": str(root / "assets"),
        "kill": {"point": point, "n": n},
    }
    proc = subprocess.run(
        [sys.executable, "-c", "import test_checkpoint; test_checkpoint._child_main()",
         json.dumps(spec)],
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    return proc.stdout


# ----------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run with checkpoints: root/checkpoints, root/assets, and its result."""
    root = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(srel.training, "make_resnet18", tiny_net)
        result = run_experiment(
            ExperimentConfig(**TINY), checkpoint_dir=root / "checkpoints", verbose=False
        )
    save_results(result, root / "assets")
    return {"root": root, "result": result}


@pytest.fixture
def tiny_model(monkeypatch):
    monkeypatch.setattr(srel.training, "make_resnet18", tiny_net)


def _copy_checkpoints(reference, root: Path) -> list:
    """The reference's checkpoints copied to root/checkpoints, oldest first."""
    shutil.copytree(reference["root"] / "checkpoints", root / "checkpoints")
    return sorted((root / "checkpoints").glob("checkpoint-*.pt"))


def _run(checkpoints: Path, assets: Path, capsys, **changes) -> list:
    """Run TINY with `changes` (resuming if it can) and save; the lines that are not per-epoch
    progress, i.e. those saying whether and where it resumed."""
    capsys.readouterr()
    config = ExperimentConfig(**dict(TINY, **changes))
    save_results(run_experiment(config, checkpoint_dir=checkpoints), assets)
    return [line for line in capsys.readouterr().out.splitlines() if not line.startswith("run ")]


def _resume(root: Path, capsys) -> list:
    return _run(root / "checkpoints", root / "assets", capsys)


def _resumed_from(lines: list, path: Path, where: str) -> bool:
    return lines == [f"Resuming from {path} ({where})."]


def _same(a, b) -> bool:
    """Equal values, arrays compared element-wise with NaN equal to NaN."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True) and (
            np.asarray(a).dtype == np.asarray(b).dtype
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return a == b or (a != a and b != b)  # NaN == NaN


def _assert_same_results(assets, expected_assets) -> None:
    """Same bytes for pair_iters and metrics, same values in details (bar timings and dates)."""
    for definition in DEFINITIONS:
        got = result_paths(assets, "digits", definition)
        want = result_paths(expected_assets, "digits", definition)
        for key in ("pair_iters", "metrics"):
            assert got[key].read_bytes() == want[key].read_bytes(), got[key]
        details, expected = load_pickle(got["details"]), load_pickle(want["details"])
        assert details.keys() == expected.keys()
        for key in set(details) - VOLATILE:
            assert _same(details[key], expected[key]), (definition, key)
        load_results(assets, "digits", definition)
    assert _temporaries(assets) == []


def _temporaries(folder: Path) -> list:
    return sorted(p.name for p in Path(folder).glob(".*.tmp"))


def _numbers(folder: Path) -> list:
    names = (re.fullmatch(r"checkpoint-(\d+)\.pt", p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in names if m)


# ----------------------------------------------------------------------------------------------
# what a checkpoint holds; determinism


def test_checkpoint_holds_everything_needed_to_resume(reference):
    """Model, optimizer, RNG states, histories so far and the loop position, per epoch."""
    folder = reference["root"] / "checkpoints"
    assert _numbers(folder) == [N_CHECKPOINTS - 1, N_CHECKPOINTS]  # the newest two are kept
    mid = torch.load(folder / "checkpoint-00005.pt", weights_only=False)  # run 2 after epoch 2
    assert mid["params"] == ExperimentConfig(**TINY).to_dict()
    state = mid["state"]
    assert (state["run"], state["epoch"], len(state["runs"])) == (1, 2, 1)
    history = state["current"]
    assert all(len(v) == 2 for v in history["metrics"].values())
    for d in DEFINITIONS:
        assert len(history["class_means"][d]) == len(history["pair_values"][d]) == 4
    model = tiny_net(3)
    model.load_state_dict(mid["extra"]["model"])
    optimizer = mid["extra"]["optimizer"]
    assert [s["step"].item() for s in optimizer["state"].values()] == [6.0] * 4  # 2 epochs x 3
    assert set(mid["rng"]) == {"torch", "cuda", "numpy", "python"}

    final = torch.load(folder / "checkpoint-00006.pt", weights_only=False)
    assert final["state"]["current"] is None and final["state"]["run"] == 2
    assert len(final["state"]["runs"]) == 2 and final["extra"] == {}


def test_two_fresh_runs_give_identical_pickles(reference, tmp_path, tiny_model):
    """Same seed, device and parameters, no checkpoints this time: the same bytes."""
    result = run_experiment(ExperimentConfig(**TINY), verbose=False)
    save_results(result, tmp_path / "assets")
    _assert_same_results(tmp_path / "assets", reference["root"] / "assets")


def test_resume_does_not_depend_on_the_global_rng_state(reference, tmp_path, capsys, tiny_model):
    """Every epoch re-seeds, so scrambled global generators change nothing on resume."""
    files = _copy_checkpoints(reference, tmp_path)
    files[-1].unlink()  # as if killed before the last checkpoint
    torch.manual_seed(12345)
    np.random.seed(678)
    random.seed(9)
    lines = _resume(tmp_path, capsys)
    assert _resumed_from(lines, files[0], "run 2/2, epoch 3/3")
    _assert_same_results(tmp_path / "assets", reference["root"] / "assets")


def test_rerun_after_the_end_resumes_without_training(
    reference, tmp_path, capsys, tiny_model, monkeypatch
):
    files = _copy_checkpoints(reference, tmp_path)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished experiment must not train again")

    monkeypatch.setattr(srel.training, "measure_s_rel", no_training)
    lines = _resume(tmp_path, capsys)
    assert _resumed_from(lines, files[-1], "all runs finished")
    _assert_same_results(tmp_path / "assets", reference["root"] / "assets")


# ----------------------------------------------------------------------------------------------
# killed runs


@pytest.mark.slow
def test_sigkill_at_every_kind_of_point_then_resume_gives_identical_pickles(
    reference, tmp_path, capsys, tiny_model
):
    """Five processes, each resuming the last one's checkpoints and killed at the next point."""
    checkpoints, assets = tmp_path / "checkpoints", tmp_path / "assets"
    # an older, complete and valid result set that a killed save must not damage
    older = copy.deepcopy(reference["result"])
    older.metrics["test_accs"][0][0] += 1.0
    for definition in DEFINITIONS:
        older.pair_iters[definition][0][0][0] += 0.5
    save_results(older, assets)
    older_bytes = {p.name: p.read_bytes() for p in assets.iterdir()}

    # after the first checkpoint file appeared
    out = _run_killed(tmp_path, "written", 1)
    assert "Resuming" not in out and _numbers(checkpoints) == [1]

    # mid-epoch: at the second measurement of run 1, epoch 2, after two training steps
    out = _run_killed(tmp_path, "measure", 2)
    assert f"Resuming from {checkpoints / 'checkpoint-00001.pt'} (run 1/2, epoch 2/3)." in out
    assert _numbers(checkpoints) == [1]

    # at a run boundary: right after the checkpoint that ends run 1
    out = _run_killed(tmp_path, "written", 2)
    assert "(run 1/2, epoch 2/3)." in out
    assert _numbers(checkpoints) == [1, 2, 3]  # killed before pruning: the next save prunes

    # inside a checkpoint write: half of checkpoint 5 in a temporary file, not renamed
    out = _run_killed(tmp_path, "writing", 2)
    assert "(run 2/2, epoch 1/3)." in out and _numbers(checkpoints) == [3, 4]
    assert len(_temporaries(checkpoints)) == 1
    assert _temporaries(checkpoints)[0].startswith(".checkpoint-00005.pt.")

    # inside a pickle write, after the last checkpoint: pair_iters_digits_kl replaced,
    # metrics_dictionary_digits_kl half written to a temporary file. The older metrics pickle
    # is intact, the orphaned checkpoint temporary gone, and the mixed set is detected.
    out = _run_killed(tmp_path, "writing", 4)
    assert "(run 2/2, epoch 2/3)." in out and _numbers(checkpoints) == [5, 6]
    assert _temporaries(checkpoints) == []
    changed = {name for name, data in older_bytes.items() if (assets / name).read_bytes() != data}
    assert changed == {"pair_iters_digits_kl.pkl"}
    metrics_kl = result_paths(assets, "digits", "kl")["metrics"]
    (partial,) = assets.glob(f".{metrics_kl.name}.*.tmp")
    with pytest.raises(ResultFileError, match=re.escape(partial.name)):
        load_pickle(partial)
    with pytest.raises(ResultFileError, match="pair_iters_digits_kl.pkl is not the file"):
        load_results(assets, "digits", "kl")

    lines = _resume(tmp_path, capsys)
    assert _resumed_from(lines, checkpoints / "checkpoint-00006.pt", "all runs finished")
    _assert_same_results(assets, reference["root"] / "assets")
    assert _temporaries(checkpoints) == []


# ----------------------------------------------------------------------------------------------
# damaged checkpoints and results, parameter changes


@pytest.mark.parametrize(
    "damage",
    [lambda b: b[: len(b) // 2], lambda b: b"", lambda b: b[:100] + bytes(len(b) - 100)],
    ids=["truncated", "empty", "zeroed"],
)
def test_corrupt_newest_checkpoint_is_set_aside_and_the_previous_resumed(
    reference, tmp_path, capsys, tiny_model, damage
):
    previous, newest = _copy_checkpoints(reference, tmp_path)
    newest.write_bytes(damage(newest.read_bytes()))
    with pytest.warns(UserWarning, match=re.escape(f"Checkpoint {newest} is corrupted")):
        lines = _resume(tmp_path, capsys)
    assert _resumed_from(lines, previous, "run 2/2, epoch 3/3")
    assert newest.with_name(newest.name + ".corrupt").is_file()
    _assert_same_results(tmp_path / "assets", reference["root"] / "assets")
    assert torch.load(newest, weights_only=False)["state"]["run"] == 2  # rewritten, readable


def test_no_readable_checkpoint_starts_fresh_and_says_so(reference, tmp_path, capsys, tiny_model):
    files = _copy_checkpoints(reference, tmp_path)
    for path in files:
        path.write_bytes(path.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="corrupted") as caught:
        lines = _resume(tmp_path, capsys)
    assert sorted(str(w.message).split()[1] for w in caught) == [str(p) for p in files]
    assert lines == [f"No readable checkpoint left in {tmp_path / 'checkpoints'}: starting fresh."]
    _assert_same_results(tmp_path / "assets", reference["root"] / "assets")


def test_parameter_change_starts_fresh_says_why_and_changing_back_resumes(
    reference, tmp_path, capsys, tiny_model
):
    files = _copy_checkpoints(reference, tmp_path)
    folder = tmp_path / "checkpoints"
    lines = _run(folder, tmp_path / "assets_short", capsys, epochs=1, runs=1)
    assert lines == [
        f"Parameters differ from the checkpoint in {folder} (epochs: 3 -> 1, runs: 2 -> 1): "
        "starting fresh."
    ]
    tag = params_tag(ExperimentConfig(**TINY).to_dict())
    assert all(p.with_name(f"{p.name}.{tag}.stale").is_file() for p in files)
    assert _numbers(folder) == [1]  # the short run's own checkpoint

    lines = _resume(tmp_path, capsys)
    assert lines == [
        f"Resuming from {files[-1]} (all runs finished), made earlier with these parameters; "
        "the newer checkpoints (epochs: 1 -> 3, runs: 1 -> 2) are set aside as stale."
    ]
    _assert_same_results(tmp_path / "assets", reference["root"] / "assets")


def test_store_numbers_keeps_two_and_skips_foreign_files(tmp_path):
    """Numbering continues past set-aside files; temporaries and other names are never read."""
    store = CheckpointStore(tmp_path, {"a": 1})
    for run in range(3):
        store.save({"run": run, "epoch": 0, "runs": [], "current": None}, {})
    assert _numbers(tmp_path) == [2, 3]
    (tmp_path / ".checkpoint-00009.pt.vm-1.abc.tmp").write_bytes(b"partial")
    (tmp_path / "checkpoint-00003.pt").replace(tmp_path / "checkpoint-00003.pt.corrupt")
    (tmp_path / "checkpoint-x.pt").write_bytes(b"junk")
    assert store.load(verbose=False)["run"] == 1
    store.save({"run": 5, "epoch": 0, "runs": [], "current": None}, {})
    assert _numbers(tmp_path) == [2, 3] and store.load(verbose=False)["run"] == 5


def test_checkpoint_dir_that_is_a_file_fails_before_training(tmp_path):
    """Otherwise the first save, after a whole epoch, would hit the file."""
    (tmp_path / "taken").write_text("x")
    for folder in (tmp_path / "taken", tmp_path / "taken" / "sub"):
        with pytest.raises(NotADirectoryError, match="taken is a file.*checkpoint_dir"):
            CheckpointStore(folder, {"a": 1})


def test_load_results_rejects_a_set_mixed_by_an_interrupted_save(reference, tmp_path):
    """New pair_iters beside the sidecar of another run: an error naming the file."""
    shutil.copytree(reference["root"] / "assets", tmp_path / "assets")
    path = result_paths(tmp_path / "assets", "digits", "suhe")["pair_iters"]
    pair_iters = load_pickle(path)
    pair_iters[0][0][0] += 1.0
    save_pickle(pair_iters, path)
    with pytest.raises(ResultFileError, match=re.escape(f"{path} is not the file")):
        load_results(tmp_path / "assets", "digits", "suhe")
    load_results(tmp_path / "assets", "digits", "kl")


# ----------------------------------------------------------------------------------------------
# the real model


def test_resnet18_gradients_are_reproducible_on_cpu():
    """Repeated per-example gradients are bit-identical (MKL's threading made them vary)."""
    torch.manual_seed(0)
    model = srel.training.make_resnet18(3)
    for label in range(3):
        x, y = torch.randn(1, 3, 32, 32), torch.tensor([label])
        grads = []
        for _ in range(6):
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
        assert all(torch.equal(g, grads[0]) for g in grads[1:])


@pytest.mark.slow
def test_resnet18_with_adam_resumes_bit_identically_after_sigkill(tmp_path, capsys):
    """The real model: its weights and Adam state round-trip exactly through a checkpoint."""
    config = dict(TINY, train_per_class=2, test_per_class=1, epochs=2, runs=1, k=1,
                  include_self=True, batch_size=6, measure_every=1, definitions=["kl"])
    result = run_experiment(ExperimentConfig(**config), verbose=False)
    save_results(result, tmp_path / "uninterrupted")

    out = _run_killed(tmp_path, "measure", 2, config=config, tiny=False)  # start of epoch 2
    assert _numbers(tmp_path / "checkpoints") == [1] and "Resuming" not in out

    capsys.readouterr()
    result = run_experiment(ExperimentConfig(**config), checkpoint_dir=tmp_path / "checkpoints")
    assert "(run 1/1, epoch 2/2)." in capsys.readouterr().out
    save_results(result, tmp_path / "assets")
    for key in ("pair_iters", "metrics"):
        got = result_paths(tmp_path / "assets", "digits", "kl")[key]
        want = result_paths(tmp_path / "uninterrupted", "digits", "kl")[key]
        assert got.read_bytes() == want.read_bytes(), got.name
