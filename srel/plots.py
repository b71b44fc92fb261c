"""Figures of S_rel during training: per-class curves, class-by-class heatmaps, training metrics.

References: Dan, Mukherjee, Das, Gampa, "Dynamics of Local Elasticity During Training of Neural
Nets", arXiv 2111.01166 (the curves S_rel(c', d) per den class d); He & Su, "The Local
Elasticity of Neural Networks", ICLR 2020.

Inputs are the in-memory result structures:
  pair_iters  list over runs -> list over the C*C ordered class pairs (num, den) in
              `pair_order` order -> list of M S_rel values (one per measurement; NaN allowed).
  metrics     dict of train_accs, train_losses, test_accs, test_losses, each a list over runs of
              per-epoch values (accuracy in percent or as a fraction, detected from the values).
  details     optional sidecar dict of our own runs: dataset, definition, class_names,
              measure_epochs (M,), pair_values (runs, M, C_den, C_num, k, k), ...
Pickles of the published code carry only pair_iters and metrics: classes are then called
"class 0", "class 1", ... and measurement positions are derived from the number of epochs.

Figures are created without pyplot: none is kept in pyplot's global registry (so nothing needs
plt.close and nothing accumulates over many calls), and a notebook shows a returned figure once,
when the call is the cell's last expression.
"""
import os
import re
import warnings
from pathlib import Path

import numpy as np
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from srel import io
from srel.elasticity import pair_order
from srel.results import METRIC_KEYS

DATASET_DIRS = {"cifar10": "CIFAR_10", "cifar100": "CIFAR_100", "svhn": "SVHN", "digits": "DIGITS"}
DEFINITION_DIRS = {"kl": "KL_Div", "suhe": "SuHe", "kl_published": "KL_Published"}
DEFINITION_LABELS = {
    "kl": "KL form",
    "suhe": "He & Su form",
    "kl_published": "published-code formula",
}
S_REL_LABEL = r"$S_{\mathrm{rel}}$"
TRAIN_COLOR, TEST_COLOR = "#3b4a6b", "#c0392b"


# ----------------------------------------------------------------------------- input handling


def _nan_padded(rows) -> np.ndarray:
    """Stack 1-d sequences of possibly different lengths into a float array, NaN-padded."""
    rows = [np.asarray(row, dtype=float).reshape(-1) for row in rows]
    out = np.full((len(rows), max((len(r) for r in rows), default=0)), np.nan)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _pair_array(pair_iters) -> np.ndarray:
    """pair_iters (runs -> C*C pairs -> M values) as an array (runs, M, C_den, C_num).

    Runs with fewer measurements than the longest are padded with NaN.
    """
    if isinstance(pair_iters, dict) or len(pair_iters) == 0:
        raise ValueError(
            "pair_iters must be a non-empty list over runs of lists over class pairs of S_rel "
            f"values, got {type(pair_iters).__name__} of length {len(pair_iters)}."
        )
    n_pairs = {len(run) for run in pair_iters}
    n_classes = int(round(np.sqrt(max(n_pairs))))
    if len(n_pairs) != 1 or n_classes * n_classes != max(n_pairs) or n_classes == 0:
        raise ValueError(
            f"each run of pair_iters must hold C*C class pairs for one C; got {sorted(n_pairs)}."
        )
    per_run = [_nan_padded(run) for run in pair_iters]  # each (C*C, M_run)
    n_meas = max(r.shape[1] for r in per_run)
    flat = np.full((len(per_run), n_classes * n_classes, n_meas), np.nan)
    for i, run in enumerate(per_run):
        flat[i, :, : run.shape[1]] = run
    out = np.empty((len(per_run), n_meas, n_classes, n_classes))
    for idx, (num, den) in enumerate(pair_order(n_classes)):
        out[:, :, den, num] = flat[:, idx, :]
    return out


def _pair_values(details, shape=None) -> np.ndarray:
    """details["pair_values"] as float (runs, M, C_den, C_num, k, k), checked against `shape`."""
    if not isinstance(details, dict) or "pair_values" not in details:
        raise ValueError("details must be the sidecar dict of a run, with a 'pair_values' array.")
    values = np.asarray(details["pair_values"], dtype=float)
    if values.ndim != 6 or values.shape[2] != values.shape[3]:
        raise ValueError(
            "details['pair_values'] must have shape (runs, M, C_den, C_num, k, k), "
            f"got {values.shape}."
        )
    if shape is not None and values.shape[:4] != tuple(shape):
        raise ValueError(
            f"details['pair_values'] has (runs, M, C, C) = {values.shape[:4]} but pair_iters has "
            f"{tuple(shape)}; pass the details saved with these results."
        )
    return values


def _class_names(class_names, details, n_classes: int) -> list:
    if class_names is None and details is not None:
        class_names = details.get("class_names")
    if class_names is None:
        return [f"class {c}" for c in range(n_classes)]
    class_names = [str(name) for name in class_names]
    if len(class_names) != n_classes:
        raise ValueError(f"{len(class_names)} class names given for {n_classes} classes.")
    return class_names


def _measurement_axis(measure_epochs, details, n_meas: int):
    """x values and x label: epochs when known, else measurement indices."""
    if measure_epochs is None and details is not None:
        measure_epochs = details.get("measure_epochs")
    if measure_epochs is None:
        return np.arange(n_meas, dtype=float), "measurement index"
    x = np.asarray(measure_epochs, dtype=float).reshape(-1)
    if len(x) != n_meas:
        raise ValueError(f"measure_epochs has {len(x)} entries for {n_meas} measurements.")
    return x, "epoch"


def _check_class(den_class, n_classes: int) -> int:
    if not isinstance(den_class, (int, np.integer)) or not 0 <= den_class < n_classes:
        raise ValueError(f"den_class must be a class index 0..{n_classes - 1}, got {den_class!r}.")
    return int(den_class)


def _class_colors(n_classes: int) -> list:
    """One color per class, the same in every figure (a class keeps its color everywhere)."""
    palette = "tab10" if n_classes <= 10 else "husl"
    return sns.color_palette(palette, n_classes)


def _new_figure(**kwargs) -> Figure:
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)  # seaborn draws the figure to check tick overlaps; Agg can draw anywhere
    return fig


def _runs(n_runs: int) -> str:
    return f"{n_runs} run{'s' if n_runs != 1 else ''}"


def _quiet(func, *args, **kwargs):
    """Call a NaN-aware numpy reduction; all-NaN slices give NaN without a RuntimeWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return func(*args, **kwargs)


def infer_measure_epochs(n_measurements: int, n_epochs: int) -> np.ndarray:
    """Epoch position of each of `n_measurements` evenly spaced measurements over `n_epochs`.

    For results without recorded positions (the published pickles): n_measurements / n_epochs
    measurements per epoch, the first one before any update, so measurement i sits at epoch
    i * n_epochs / n_measurements.
    """
    if n_epochs <= 0:
        raise ValueError(f"n_epochs must be positive, got {n_epochs}.")
    return np.arange(n_measurements) * (n_epochs / n_measurements)


# ----------------------------------------------------------------------------- S_rel curves


def plot_s_rel_curves(
    pair_iters,
    den_class: int,
    class_names=None,
    measure_epochs=None,
    stat: str = "mean",
    details=None,
    log_y: bool = False,
    title=None,
) -> Figure:
    """S_rel(c', d) over training for one den class d (the class of the updated example).

    One curve per measured class c': the own-class curve S_rel(d, d) (thick) and the
    cross-class curves. A class keeps its color in every figure of this module.

    Args:
        pair_iters: runs -> C*C pairs (`pair_order`) -> M values; may be None with stat="median".
        den_class: index d of the class whose examples are updated.
        class_names: C names; default details["class_names"], else "class 0", ...
        measure_epochs: (M,) epoch of each measurement; default details["measure_epochs"], else
            the x axis is the measurement index (see `infer_measure_epochs`).
        stat: "mean": mean over runs, band +-1 std over runs (population std, ddof=0; no band
            for one run). "median": per measurement, median of all k x k individual values of
            the pair pooled over runs, band = interquartile range; needs `details`.
        log_y: logarithmic y axis (symmetric log when some plotted values are <= 0).
    """
    if stat not in ("mean", "median"):
        raise ValueError(f"stat must be 'mean' or 'median', got {stat!r}.")
    if stat == "median" and details is None:
        raise ValueError(
            "stat='median' needs the details sidecar (individual pair values); pass details=..., "
            "or use stat='mean' for results without it (e.g. the published pickles)."
        )
    if pair_iters is None and stat == "mean":
        raise ValueError("stat='mean' needs pair_iters.")
    if pair_iters is not None:
        s_rel = _pair_array(pair_iters)  # (runs, M, C_den, C_num)
        values = _pair_values(details, s_rel.shape) if stat == "median" else None
    else:
        values = _pair_values(details)  # (runs, M, C_den, C_num, k, k)
        s_rel = None
    n_runs, n_meas, n_classes = (s_rel if s_rel is not None else values).shape[:3]
    den = _check_class(den_class, n_classes)
    names = _class_names(class_names, details, n_classes)
    x, xlabel = _measurement_axis(measure_epochs, details, n_meas)

    # center line and band per measured class
    curves = {}
    for num in range(n_classes):
        if stat == "mean":
            runs = s_rel[:, :, den, num]  # (runs, M)
            center = _quiet(np.nanmean, runs, axis=0)
            if n_runs > 1:
                spread = _quiet(np.nanstd, runs, axis=0)
                band = (center - spread, center + spread)
            else:
                band = None
        else:
            pooled = np.moveaxis(values[:, :, den, num], 1, 0).reshape(n_meas, -1)  # (M, runs*k*k)
            center = _quiet(np.nanmedian, pooled, axis=1)
            band = tuple(_quiet(np.nanpercentile, pooled, [25, 75], axis=1))
        curves[num] = (center, band)

    # draw: own class first, then the others in pair order
    fig = _new_figure(figsize=(9.5, 4.6), layout="constrained")
    ax = fig.add_subplot()
    colors = _class_colors(n_classes)
    plotted = np.concatenate([c for c, _ in curves.values()])
    plotted = plotted[np.isfinite(plotted)]
    log_positive = log_y and plotted.size > 0 and plotted.min() > 0
    for num in [den] + [c for c in range(n_classes) if c != den]:
        center, band = curves[num]
        if band is not None and log_positive:
            # a log axis cannot show mean - std <= 0: leave the band out there instead of
            # drawing it down to the bottom of the axes
            band = (np.where(band[0] > 0, band[0], np.nan), band[1])
        own = num == den
        label = f"update on {names[den]}, measured on {names[num]}"
        label += " (own class)" if own else ""
        width, zorder = (2.6, 3) if own else (1.7, 2)  # own class thick and on top
        ax.plot(x, center, color=colors[num], lw=width, label=label, zorder=zorder)
        if band is not None:
            ax.fill_between(x, band[0], band[1], color=colors[num], alpha=0.18, lw=0)

    if log_y:
        if log_positive:
            ax.set_yscale("log", nonpositive="clip")
        else:
            # linear band around 0 just wide enough for the smaller tenth of the magnitudes
            magnitudes = np.abs(plotted[plotted != 0])
            linthresh = float(np.percentile(magnitudes, 10)) if magnitudes.size else 1.0
            ax.set_yscale("symlog", linthresh=linthresh)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{S_REL_LABEL}(x, x')")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)

    if stat == "mean":
        spread = "mean over runs" + (", band: ±1 std over runs" if n_runs > 1 else "")
        subtitle = f"{spread} ({_runs(n_runs)})"
    else:
        k = values.shape[-1]
        subtitle = (
            f"median of {k}x{k} individual pairs pooled over {_runs(n_runs)}, "
            "band: interquartile range"
        )
    definition = DEFINITION_LABELS.get((details or {}).get("definition"))
    default_title = f"{S_REL_LABEL} after updates on {names[den]}"
    if definition:
        default_title += f" ({definition})"
    fig.suptitle(title or default_title, fontsize=12)
    ax.set_title(subtitle, fontsize=9, color="0.35")
    return fig


# ----------------------------------------------------------------------------- training metrics


def _metric_arrays(metrics) -> dict:
    if not isinstance(metrics, dict):
        raise ValueError(f"metrics must be a dict of {METRIC_KEYS}, got {type(metrics).__name__}.")
    missing = [key for key in METRIC_KEYS if key not in metrics]
    if missing:
        raise ValueError(f"metrics lacks {missing}; it must hold {METRIC_KEYS} (lists over runs).")
    arrays = {}
    for key in METRIC_KEYS:
        runs = metrics[key]
        if len(runs) == 0:
            raise ValueError(f"metrics[{key!r}] holds no runs.")
        if np.ndim(runs[0]) == 0:  # a single run stored as a flat list of epochs
            runs = [runs]
        arrays[key] = _nan_padded(runs)  # (runs, epochs)
    return arrays


def plot_metrics(metrics, title=None) -> Figure:
    """Accuracy and loss, train and test, per epoch: mean over runs with a +-1 std band.

    Values are taken to be recorded at the end of each epoch and drawn at epochs 1..E.
    Accuracy counts as percent when any value exceeds 1, else as a fraction.
    """
    arrays = _metric_arrays(metrics)
    accs = np.concatenate([arrays["train_accs"].ravel(), arrays["test_accs"].ravel()])
    # NOTE: a run that never exceeds 1 % accuracy would be read as fractions - no such runs here.
    percent = bool(np.nanmax(accs, initial=0.0) > 1.0) if np.isfinite(accs).any() else False
    n_runs = max(a.shape[0] for a in arrays.values())

    fig = _new_figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    panels = (
        (axes[0], "accs", "accuracy (%)" if percent else "accuracy (fraction)"),
        (axes[1], "losses", "loss"),
    )
    for ax, kind, ylabel in panels:
        for split, color, style in (("train", TRAIN_COLOR, "--"), ("test", TEST_COLOR, "-")):
            runs = arrays[f"{split}_{kind}"]
            epochs = np.arange(1, runs.shape[1] + 1)
            center = _quiet(np.nanmean, runs, axis=0)
            ax.plot(epochs, center, color=color, ls=style, lw=2, marker="o", ms=3, label=split)
            if runs.shape[0] > 1:
                spread = _quiet(np.nanstd, runs, axis=0)
                band = (center - spread, center + spread)
                ax.fill_between(epochs, *band, color=color, alpha=0.18, lw=0)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
    axes[0].set_title("accuracy", fontsize=10)
    axes[1].set_title("loss", fontsize=10)
    how = f"mean over {n_runs} runs, band: ±1 std" if n_runs > 1 else "1 run"
    fig.suptitle(title or f"Training curves ({how})")
    return fig


# ----------------------------------------------------------------------------- heatmaps


def _heatmap_indices(at, n_meas: int) -> list:
    if at is None:
        return list(dict.fromkeys([0, n_meas // 2, n_meas - 1]))
    at = [at] if np.ndim(at) == 0 else list(at)
    bad = [i for i in at if not isinstance(i, (int, np.integer)) or not -n_meas <= i < n_meas]
    if bad or not at:
        raise ValueError(
            f"at must be measurement indices in {-n_meas}..{n_meas - 1} (int or list), got {at!r}."
        )
    return [int(i) % n_meas for i in at]


def plot_s_rel_heatmap(
    results,
    at=None,
    class_names=None,
    measure_epochs=None,
    log_color=None,
    title=None,
) -> Figure:
    """C x C heatmaps of mean S_rel at chosen measurements, one panel each, one color scale.

    Rows: den class (class of the updated example); columns: num class (class where the change
    is measured). Empty cells (all values excluded) stay blank with "n/a".

    Args:
        results: pair_iters (cell = mean over runs of the stored value) or the details sidecar
            (cell = mean of the k x k individual values pooled over runs; also supplies class
            names and measurement epochs).
        at: measurement index or list of indices (negative count from the end); default first,
            middle (M // 2) and last.
        log_color: logarithmic color scale; None = when all values are > 0 and span at least two
            decades. When values have both signs the scale is diverging around 0.
    """
    details = results if isinstance(results, dict) else None
    if details is not None:
        values = _pair_values(details)
        means = _quiet(np.nanmean, values, axis=(0, 4, 5))  # (M, C_den, C_num)
        n_runs = values.shape[0]
        how = f"mean of individual pairs pooled over {_runs(n_runs)}"
    else:
        s_rel = _pair_array(results)
        means = _quiet(np.nanmean, s_rel, axis=0)  # (M, C_den, C_num)
        n_runs = s_rel.shape[0]
        how = f"mean over {_runs(n_runs)}"
    n_meas, n_classes = means.shape[:2]
    names = _class_names(class_names, details, n_classes)
    x, xlabel = _measurement_axis(measure_epochs, details, n_meas)
    indices = _heatmap_indices(at, n_meas)

    # one color scale for all panels
    shown = means[indices]
    finite = shown[np.isfinite(shown)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    positive = finite.size > 0 and vmin > 0
    if log_color is None:
        log_color = positive and vmax / vmin >= 100
    if log_color and not positive:
        raise ValueError("log_color=True needs all shown S_rel values > 0; use log_color=False.")
    if vmin < 0 < vmax and not log_color:
        vmax = max(-vmin, vmax)
        heat_kw = {"cmap": "vlag", "vmin": -vmax, "vmax": vmax}  # diverging around 0
    else:
        heat_kw = {"cmap": "viridis", "vmin": vmin, "vmax": vmax if vmax > vmin else vmin + 1.0}
    if log_color:
        heat_kw["norm"] = LogNorm(vmin=vmin, vmax=vmax)

    fig = _new_figure(figsize=(3.9 * len(indices) + 1.2, 4.2), layout="constrained")
    grid = fig.add_gridspec(1, len(indices) + 1, width_ratios=[1] * len(indices) + [0.06])
    cax = fig.add_subplot(grid[0, -1])
    colors = _class_colors(n_classes)
    for panel, idx in enumerate(indices):
        ax = fig.add_subplot(grid[0, panel])
        ax.set_facecolor("0.92")
        _quiet(
            sns.heatmap,
            means[idx],
            ax=ax,
            annot=True,
            fmt=".3g",
            square=True,
            linewidths=0.5,
            cbar=panel == 0,
            cbar_ax=cax if panel == 0 else None,
            cbar_kws={"label": f"mean {S_REL_LABEL}"},
            xticklabels=names,
            yticklabels=names,
            **heat_kw,
        )
        for row, col in zip(*np.nonzero(~np.isfinite(means[idx]))):
            ax.text(col + 0.5, row + 0.5, "n/a", ha="center", va="center", color="0.4", fontsize=9)
        for label, color in zip(ax.get_xticklabels(), colors):
            label.set_color(color)
        for label, color in zip(ax.get_yticklabels(), colors):
            label.set_color(color)
        ax.tick_params(axis="y", labelrotation=0)
        where = f"measurement {idx + 1}/{n_meas}"
        where = f"epoch {x[idx]:.2f} ({where})" if xlabel == "epoch" else where
        ax.set_title(where, fontsize=10)
        ax.set_xlabel("measured on (num class)")
        ax.set_ylabel("update on (den class)" if panel == 0 else "")
    scale = ", log color scale" if log_color else ""
    fig.suptitle(title or f"{S_REL_LABEL} between classes ({how}{scale})")
    return fig


# ----------------------------------------------------------------------------- all figures


def _dataset_dir(dataset: str) -> str:
    return DATASET_DIRS.get(dataset.lower(), dataset.upper())


def plot_dir(plots_dir, dataset: str, definition: str) -> Path:
    """<plots_dir>/<DATASET_DIR>/<DEF_DIR>, e.g. Plots/CIFAR_10/KL_Div (relative to the repo)."""
    if definition not in DEFINITION_DIRS:
        raise ValueError(
            f"Unknown S_rel definition {definition!r}; choose from {list(DEFINITION_DIRS)}."
        )
    if not dataset:
        raise ValueError("dataset must be a non-empty name such as 'cifar10'.")
    return io.resolve_path(plots_dir) / _dataset_dir(dataset) / DEFINITION_DIRS[definition]


def _file_stems(names: list) -> list:
    """File-name-safe class names; class indices when names collide after cleaning."""
    stems = [re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") for name in names]
    if len(set(stems)) < len(stems) or not all(stems):
        stems = [f"class_{c}" for c in range(len(names))]
    return stems


def _load_if_path(obj):
    return io.load_pickle(obj) if isinstance(obj, (str, os.PathLike)) else obj


def plot_all(
    pair_iters,
    metrics,
    details=None,
    plots_dir="Plots",
    dataset=None,
    definition=None,
) -> list:
    """Draw every figure of one result set and save them as PNG under `plot_dir(...)`.

    Files: s_rel_den_<class>.png per den class (mean over runs), s_rel_den_<class>_median.png
    when `details` is given, metrics.png, s_rel_heatmap.png. <class> is the cleaned class name
    ("class_0", ... when names are unknown). pair_iters, metrics and details may also be paths
    of pickles. Without details["measure_epochs"], measurement positions are inferred from the
    number of epochs in `metrics` (`infer_measure_epochs`).

    Returns:
        list of the written paths.
    """
    pair_iters, metrics, details = map(_load_if_path, (pair_iters, metrics, details))
    dataset = dataset or (details or {}).get("dataset")
    definition = definition or (details or {}).get("definition")
    if not dataset or not definition:
        raise ValueError(
            "plot_all needs dataset and definition (e.g. dataset='cifar10', definition='kl'); "
            "pass them, or pass the details sidecar that records them."
        )
    out_dir = plot_dir(plots_dir, dataset, definition)

    # check everything before drawing or writing anything
    s_rel = _pair_array(pair_iters)
    n_runs, n_meas, n_classes = s_rel.shape[:3]
    if details is not None:
        _pair_values(details, s_rel.shape)
    names = _class_names(None, details, n_classes)
    metric_arrays = _metric_arrays(metrics)
    measure_epochs = (details or {}).get("measure_epochs")
    if measure_epochs is None:
        measure_epochs = infer_measure_epochs(n_meas, metric_arrays["train_accs"].shape[1])
    _measurement_axis(measure_epochs, None, n_meas)

    where = f"{_dataset_dir(dataset).replace('_', '-')}, {DEFINITION_LABELS[definition]}"
    stems = _file_stems(names)
    # heavy tails (a well-fit x moves little, so its ratios explode) flatten a linear axis
    finite = s_rel[np.isfinite(s_rel)]
    log_y = finite.size > 0 and finite.min() > 0 and finite.max() / finite.min() > 100
    # draw every figure first, so a failure leaves no partial set of files
    figures = []
    for den in range(n_classes):
        for stat in ["mean", "median"] if details is not None else ["mean"]:
            fig = plot_s_rel_curves(
                pair_iters,
                den,
                class_names=names,
                measure_epochs=measure_epochs,
                stat=stat,
                details=details,
                log_y=log_y,
                title=f"{where}: {S_REL_LABEL} after updates on {names[den]}",
            )
            suffix = "_median" if stat == "median" else ""
            figures.append((f"s_rel_den_{stems[den]}{suffix}.png", fig))
    figures.append(("metrics.png", plot_metrics(metrics, title=f"{where}: training curves")))
    heatmap = plot_s_rel_heatmap(
        pair_iters,
        class_names=names,
        measure_epochs=measure_epochs,
        title=f"{where}: mean {S_REL_LABEL} over {_runs(n_runs)}",
    )
    figures.append(("s_rel_heatmap.png", heatmap))

    # NOTE: the figures are not registered with pyplot, so dropping them frees them (no plt.close)
    return [io.save_figure(fig, out_dir / name) for name, fig in figures]
