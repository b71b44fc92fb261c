"""Result pickles in the published layout, plus a sidecar with everything else a run knows.

Per dataset and S_rel definition, under the assets folder:
  pair_iters_<dataset>_<definition>.pkl          list over runs -> list over the C*C ordered
                                                 class pairs (srel.elasticity.pair_order) ->
                                                 list of S_rel over measurements
  metrics_dictionary_<dataset>_<definition>.pkl  {train_accs, train_losses, test_accs,
                                                 test_losses}: list over runs of per-epoch lists
                                                 (accuracies in percent)
  details_<dataset>_<definition>.pkl             sidecar: parameters as run, seeds, versions, git
                                                 commit, data source, measurement epochs,
                                                 (runs, M, C, C, k, k) pair values, floor and
                                                 non-finite counts, timings
The first two match the structure of the paper's published pickles, so analysis code written
for those loads ours unchanged.
"""
import datetime
import hashlib
import math
import platform
import subprocess
import warnings
from pathlib import Path

import numpy as np

from .elasticity import DEFINITIONS, pair_order
from .io import REPO_ROOT, ResultFileError, load_pickle, resolve_path, save_pickle

METRIC_KEYS = ("train_accs", "train_losses", "test_accs", "test_losses")


def result_paths(assets_dir, dataset: str, definition: str) -> dict:
    folder = resolve_path(assets_dir)
    tag = f"{dataset}_{definition}"
    return {
        "pair_iters": folder / f"pair_iters_{tag}.pkl",
        "metrics": folder / f"metrics_dictionary_{tag}.pkl",
        "details": folder / f"details_{tag}.pkl",
    }


def versions() -> dict:
    import torch
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
    }


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
        )
        commit = out.stdout.strip()
        return (commit + ("-dirty" if dirty.stdout.strip() else "")) if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def details_of(result, definition: str) -> dict:
    """The sidecar dict of one definition of an `ExperimentResult`."""
    return {
        "format": 1,
        "dataset": result.config["dataset"],
        "definition": definition,
        "class_names": list(result.class_names),
        "pair_order": pair_order(len(result.class_names)),
        "measure_epochs": list(result.measure_epochs),
        "pair_values": result.pair_values[definition],
        "n_floored": result.n_floored[definition],
        "n_nonfinite": result.n_nonfinite[definition],
        "params": dict(result.config),
        "seeds": list(result.seeds),
        "reference_indices": [np.asarray(i) for i in result.reference_indices],
        "source": result.source,
        "versions": versions(),
        "git_commit": git_commit(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": dict(result.seconds),
    }


def save_results(result, assets_dir="Assets") -> list:
    """Write the three pickles for every definition in `result`; returns the paths written."""
    written = []
    for definition in result.pair_iters:
        paths = result_paths(assets_dir, result.config["dataset"], definition)
        details = details_of(result, definition)
        # the sidecar goes last and records the others' hashes: a set mixed by an interrupted
        # save (new pair_iters beside an old sidecar, say) is caught by load_results
        written.append(save_pickle(result.pair_iters[definition], paths["pair_iters"]))
        written.append(save_pickle(result.metrics, paths["metrics"]))
        details["sha256"] = {key: _sha256(paths[key]) for key in ("pair_iters", "metrics")}
        written.append(save_pickle(details, paths["details"]))
    return written


def plot_result(result, plots_dir="Plots") -> list:
    """Every figure of every definition of an `ExperimentResult` under `plots_dir`."""
    from .plots import plot_all

    written = []
    for definition in result.pair_iters:
        written += plot_all(
            result.pair_iters[definition],
            result.metrics,
            details_of(result, definition),
            plots_dir=plots_dir,
        )
    return written


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_pair_iters(pair_iters, path="pair_iters") -> tuple:
    """Validate the published structure; returns (runs, n_classes, n_measurements)."""
    if (not isinstance(pair_iters, list) or not pair_iters
            or not all(isinstance(run, list) for run in pair_iters)
            or not all(isinstance(series, (list, tuple, np.ndarray))
                       for run in pair_iters for series in run)):
        raise ResultFileError(
            f"{path}: expected a non-empty list over runs of lists over class pairs of lists of "
            f"S_rel values over measurements."
        )
    n_pairs = len(pair_iters[0])
    n_classes = math.isqrt(n_pairs)
    if n_classes < 2 or n_classes * n_classes != n_pairs:
        raise ResultFileError(f"{path}: {n_pairs} class pairs per run is not C*C for any C >= 2.")
    lengths = {len(series) for run in pair_iters for series in run}
    if any(len(run) != n_pairs for run in pair_iters) or len(lengths) != 1:
        raise ResultFileError(f"{path}: runs differ in their number of pairs or measurements.")
    n_measurements = lengths.pop()
    if n_measurements == 0:
        raise ResultFileError(f"{path}: holds no measurements.")
    try:
        np.asarray(pair_iters, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ResultFileError(f"{path}: S_rel values must be numbers ({exc}).") from None
    return len(pair_iters), n_classes, n_measurements


def check_metrics(metrics, path="metrics") -> None:
    if not isinstance(metrics, dict) or set(METRIC_KEYS) - set(metrics):
        raise ResultFileError(f"{path}: expected a dict with keys {METRIC_KEYS}.")
    for key in METRIC_KEYS:
        runs = metrics[key]
        try:
            ok = isinstance(runs, list) and bool(runs) and all(
                np.asarray(run, dtype=float).ndim == 1 for run in runs
            )
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ResultFileError(
                f"{path}: {key!r} must be a non-empty list over runs of per-epoch numbers, got "
                f"{runs!r:.80}."
            )


def load_results(assets_dir="Assets", dataset="digits", definition="kl") -> dict:
    """Load and check {pair_iters, metrics, details}; details is None when absent (e.g. the
    paper's published pickles, which have no sidecar)."""
    paths = result_paths(assets_dir, dataset, definition)
    for key in ("pair_iters", "metrics"):
        if not paths[key].is_file():
            raise FileNotFoundError(
                f"{paths[key]} not found. Run the {dataset} notebook with definition "
                f"{definition!r} (or copy published pickles there) first."
            )
    pair_iters = load_pickle(paths["pair_iters"])
    runs, n_classes, n_measurements = check_pair_iters(pair_iters, paths["pair_iters"])
    metrics = load_pickle(paths["metrics"])
    check_metrics(metrics, paths["metrics"])
    details = load_pickle(paths["details"]) if paths["details"].is_file() else None
    if details is not None and not isinstance(details, dict):
        raise ResultFileError(
            f"{paths['details']}: expected the sidecar dict of a run, got "
            f"{type(details).__name__}; delete it (the other two pickles load without it)."
        )
    if details is not None:
        for key, digest in details.get("sha256", {}).items():
            if _sha256(paths[key]) != digest:
                raise ResultFileError(
                    f"{paths[key]} is not the file {paths['details'].name} was saved with (an "
                    f"interrupted save mixed two runs' files); rerun the notebook that writes them."
                )
        shape = np.shape(details.get("pair_values"))
        if shape[:4] != (runs, n_measurements, n_classes, n_classes):
            raise ResultFileError(
                f"{paths['details']} does not match {paths['pair_iters'].name} "
                f"(pair values {shape[:4]} vs runs/measurements/classes "
                f"{(runs, n_measurements, n_classes, n_classes)}); rerun the notebook."
            )
    return {"pair_iters": pair_iters, "metrics": metrics, "details": details}


def list_results(assets_dir="Assets") -> list:
    """(dataset, definition) of every pair_iters pickle in the folder, sorted.

    Files whose name ends in no known definition (a renamed copy such as
    pair_iters_cifar10_kl_old.pkl) are skipped with a warning naming them.
    """
    folder = Path(resolve_path(assets_dir))
    if not folder.is_dir():
        raise FileNotFoundError(f"assets folder {folder} is not a folder; check assets_dir.")
    found, skipped = [], []
    for path in folder.glob("pair_iters_*.pkl"):
        dataset, _, definition = path.stem[len("pair_iters_"):].rpartition("_")
        if definition == "published" and dataset.endswith("_kl"):
            dataset, definition = dataset[: -len("_kl")], "kl_published"
        if dataset and definition in DEFINITIONS:
            found.append((dataset, definition))
        else:
            skipped.append(path.name)
    if skipped:
        warnings.warn(
            f"{folder}: skipped {sorted(skipped)}: not named pair_iters_<dataset>_<definition>.pkl "
            f"with a definition in {DEFINITIONS}.",
            stacklevel=2,
        )
    return sorted(found)


def summary_table(pair_iters, class_names=None, at=(0, -1)):
    """Own-class vs cross-class S_rel per den class at chosen measurements (mean over runs).

    Returns a pandas DataFrame indexed by the class of the updated point with columns
    `own@<i>` (S_rel(d, d)) and `cross@<i>` (mean of S_rel(c, d) over c != d), one pair per
    measurement index in `at`, and a last row `all` averaging the classes.
    """
    import pandas as pd

    runs, n_classes, n_meas = check_pair_iters(pair_iters)
    values = np.asarray(pair_iters, dtype=float)  # (runs, pairs, M)
    names = list(class_names) if class_names else [f"class {c}" for c in range(n_classes)]
    index = {pair: i for i, pair in enumerate(pair_order(n_classes))}
    table = {}
    for i in at:
        i = i % n_meas
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN entries stay NaN
            mean = np.nanmean(values[:, :, i], axis=0)  # (pairs,)
            table[f"own@{i}"] = [mean[index[(d, d)]] for d in range(n_classes)]
            table[f"cross@{i}"] = [
                np.nanmean([mean[index[(c, d)]] for c in range(n_classes) if c != d])
                for d in range(n_classes)
            ]
    frame = pd.DataFrame(table, index=pd.Index(names, name="updated class"))
    frame.loc["all"] = frame.mean()
    return frame
