"""Plots: plotted data equal hand-derived means/medians, files land in the right folders."""
import statistics
import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import LogNorm, to_hex  # noqa: E402

from srel import io, plots  # noqa: E402

NAMES = ["airplane", "automobile", "bird"]
N_CLASSES, N_RUNS, N_MEAS, N_EPOCHS, K = 3, 2, 14, 2, 4
# (num, den) order of the result pickles, written out by hand for 3 classes
ORDER = [(0, 0), (1, 0), (2, 0), (1, 1), (0, 1), (2, 1), (2, 2), (0, 2), (1, 2)]


def base(num, den, m):
    """Distinct value per pair and measurement, so a permuted pair order shows."""
    return (1 + 10 * den + num) * (m + 1)


def value(run, num, den, m):
    # run 0: base, run 1: 3 * base -> mean over runs 2 * base, population std base
    return base(num, den, m) * (1 + 2 * run)


def make_pair_iters():
    return [
        [[float(value(r, num, den, m)) for m in range(N_MEAS)] for num, den in ORDER]
        for r in range(N_RUNS)
    ]


def make_metrics(percent=True):
    scale = 1.0 if percent else 0.01
    epochs = range(N_EPOCHS)
    return {
        "train_accs": [[scale * (50 + 10 * e + 4 * r) for e in epochs] for r in range(N_RUNS)],
        "test_accs": [[scale * (40 + 10 * e + 4 * r) for e in epochs] for r in range(N_RUNS)],
        "train_losses": [[1.0 - 0.2 * e + 0.1 * r for e in epochs] for r in range(N_RUNS)],
        "test_losses": [[1.2 - 0.2 * e + 0.1 * r for e in epochs] for r in range(N_RUNS)],
    }


def make_details(seed=0):
    rng = np.random.default_rng(seed)
    shape = (N_RUNS, N_MEAS, N_CLASSES, N_CLASSES, K, K)
    values = rng.lognormal(0.0, 1.0, shape).astype(np.float32)
    values[rng.random(shape) < 0.1] = np.nan
    values[:, 4, 2, 1] = np.nan  # one pair excluded at every point of one measurement
    return {
        "dataset": "cifar10",
        "definition": "kl",
        "class_names": NAMES,
        "measure_epochs": list(np.arange(N_MEAS) / 7),
        "pair_values": values,
        "n_floored": np.zeros(shape[:4], dtype=int),
        "n_nonfinite": np.zeros(shape[:4], dtype=int),
    }


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def band_limits(collection, x):
    """(lower, upper) edge of a fill_between band at each x; NaN where the band has a gap."""
    vertices = np.concatenate([path.vertices for path in collection.get_paths()])
    lower, upper = [], []
    for xi in x:
        ys = vertices[np.isclose(vertices[:, 0], xi), 1]
        lower.append(ys.min() if ys.size else np.nan)
        upper.append(ys.max() if ys.size else np.nan)
    return np.array(lower), np.array(upper)


class TestSRelCurves:
    def test_mean_lines_and_std_band(self):
        """Each line is the mean over runs of its own pair; the band is mean +- population std."""
        den = 1
        fig = plots.plot_s_rel_curves(make_pair_iters(), den, class_names=NAMES)
        ax = fig.axes[0]
        lines = lines_by_label(ax)
        assert len(lines) == N_CLASSES
        assert ax.get_xlabel() == "measurement index"
        bands = ax.collections
        for num in range(N_CLASSES):
            label = f"update on {NAMES[den]}, measured on {NAMES[num]}"
            label += " (own class)" if num == den else ""
            x, y = lines[label].get_data()
            expected = np.array([2.0 * base(num, den, m) for m in range(N_MEAS)])
            np.testing.assert_allclose(x, np.arange(N_MEAS))
            np.testing.assert_allclose(y, expected)
        # bands are drawn in line order: own class first
        drawn = [den] + [c for c in range(N_CLASSES) if c != den]
        for band, num in zip(bands, drawn):
            std = np.array([base(num, den, m) for m in range(N_MEAS)], dtype=float)
            lower, upper = band_limits(band, np.arange(N_MEAS))
            mean = 2.0 * std
            np.testing.assert_allclose(lower, mean - std)
            np.testing.assert_allclose(upper, mean + std)

    def test_epoch_axis_from_details(self):
        """measure_epochs from the sidecar become the x values."""
        details = make_details()
        fig = plots.plot_s_rel_curves(make_pair_iters(), 0, details=details)
        ax = fig.axes[0]
        assert ax.get_xlabel() == "epoch"
        for line in ax.get_lines():
            np.testing.assert_allclose(line.get_xdata(), np.arange(N_MEAS) / 7)
        assert any("airplane" in label for label in lines_by_label(ax))

    def test_single_run_has_no_band(self):
        pair_iters = make_pair_iters()[:1]
        ax = plots.plot_s_rel_curves(pair_iters, 2).axes[0]
        assert len(ax.collections) == 0
        line = lines_by_label(ax)["update on class 2, measured on class 2 (own class)"]
        np.testing.assert_allclose(line.get_ydata(), [base(2, 2, m) for m in range(N_MEAS)])

    def test_median_of_pooled_pair_values(self):
        """stat='median': median and quartiles of all k x k values pooled over runs."""
        details = make_details()
        values = details["pair_values"].astype(float)
        den, num = 2, 1
        fig = plots.plot_s_rel_curves(make_pair_iters(), den, stat="median", details=details)
        ax = fig.axes[0]
        line = lines_by_label(ax)["update on bird, measured on automobile"]
        band = ax.collections[[den, 0, 1].index(num)]
        x = np.arange(N_MEAS) / 7
        q25, q75 = band_limits(band, x)
        for m in range(N_MEAS):
            pool = [
                values[r, m, den, num, i, j]
                for r in range(N_RUNS)
                for i in range(K)
                for j in range(K)
                if np.isfinite(values[r, m, den, num, i, j])
            ]
            if not pool:  # measurement 4: every pair excluded
                assert m == 4 and np.isnan(line.get_ydata()[m]) and np.isnan(q25[m])
                continue
            assert line.get_ydata()[m] == pytest.approx(statistics.median(pool))
            assert q25[m] == pytest.approx(np.percentile(pool, 25))
            assert q75[m] == pytest.approx(np.percentile(pool, 75))

    def test_median_without_pair_iters(self):
        details = make_details()
        fig = plots.plot_s_rel_curves(None, 0, stat="median", details=details)
        assert len(fig.axes[0].get_lines()) == N_CLASSES

    def test_nan_values(self):
        """NaN in one run: mean of the other; NaN in all runs: a gap; no warnings."""
        pair_iters = make_pair_iters()
        idx = ORDER.index((2, 0))
        pair_iters[0][idx][3] = float("nan")
        pair_iters[0][idx][5] = pair_iters[1][idx][5] = float("nan")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fig = plots.plot_s_rel_curves(pair_iters, 0, class_names=NAMES, log_y=True)
            plots.plot_s_rel_heatmap(pair_iters, at=5)
        y = lines_by_label(fig.axes[0])["update on airplane, measured on bird"].get_ydata()
        assert y[3] == value(1, 2, 0, 3)
        assert np.isnan(y[5])
        assert fig.axes[0].get_yscale() == "log"

    def test_log_y_with_nonpositive_values_is_symlog(self):
        pair_iters = [[[v - 100.0 for v in pair] for pair in run] for run in make_pair_iters()]
        ax = plots.plot_s_rel_curves(pair_iters, 0, log_y=True).axes[0]
        assert ax.get_yscale() == "symlog"

    def test_class_keeps_its_color(self):
        """A measured class has one color in every den figure and in the heatmap labels."""
        pair_iters = make_pair_iters()
        colors = []
        for den in range(N_CLASSES):
            lines = lines_by_label(plots.plot_s_rel_curves(pair_iters, den, NAMES).axes[0])
            bird = [line for label, line in lines.items() if "measured on bird" in label]
            colors.append(to_hex(bird[0].get_color()))
        heatmap_ax = plots.plot_s_rel_heatmap(pair_iters, at=0, class_names=NAMES).axes[1]
        colors.append(to_hex(heatmap_ax.get_xticklabels()[2].get_color()))
        assert len(set(colors)) == 1

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"stat": "max"}, "stat"),
            ({"stat": "median"}, "details sidecar"),
            ({"den_class": 3}, "den_class"),
            ({"class_names": ["a", "b"]}, "class names"),
            ({"measure_epochs": [0.0, 1.0]}, "measure_epochs"),
        ],
    )
    def test_bad_arguments(self, kwargs, match):
        args = {"den_class": 0, **kwargs}
        with pytest.raises(ValueError, match=match):
            plots.plot_s_rel_curves(make_pair_iters(), **args)

    def test_bad_structures(self):
        with pytest.raises(ValueError, match="C\\*C"):
            plots.plot_s_rel_curves([run[:8] for run in make_pair_iters()], 0)
        details = make_details()
        details["pair_values"] = details["pair_values"][:, :5]
        with pytest.raises(ValueError, match="pair_values"):
            plots.plot_s_rel_curves(make_pair_iters(), 0, stat="median", details=details)


class TestMetrics:
    def test_means_bands_and_percent_label(self):
        fig = plots.plot_metrics(make_metrics())
        acc_ax, loss_ax = fig.axes
        assert acc_ax.get_ylabel() == "accuracy (%)"
        acc = lines_by_label(acc_ax)
        np.testing.assert_allclose(acc["train"].get_xdata(), [1, 2])
        np.testing.assert_allclose(acc["train"].get_ydata(), [52.0, 62.0])
        np.testing.assert_allclose(acc["test"].get_ydata(), [42.0, 52.0])
        loss = lines_by_label(loss_ax)
        np.testing.assert_allclose(loss["train"].get_ydata(), [1.05, 0.85])
        np.testing.assert_allclose(loss["test"].get_ydata(), [1.25, 1.05])
        lower, upper = band_limits(acc_ax.collections[0], [1, 2])
        np.testing.assert_allclose(upper - lower, [4.0, 4.0])  # 2 * population std

    def test_fraction_accuracy(self):
        fig = plots.plot_metrics(make_metrics(percent=False))
        assert fig.axes[0].get_ylabel() == "accuracy (fraction)"
        np.testing.assert_allclose(lines_by_label(fig.axes[0])["train"].get_ydata(), [0.52, 0.62])

    def test_missing_key(self):
        metrics = make_metrics()
        del metrics["test_losses"]
        with pytest.raises(ValueError, match="test_losses"):
            plots.plot_metrics(metrics)


class TestHeatmap:
    @staticmethod
    def cells(ax):
        return np.ma.filled(ax.collections[0].get_array(), np.nan).reshape(N_CLASSES, N_CLASSES)

    def test_default_panels_hold_mean_over_runs(self):
        """Rows den, columns num; panels at first, middle and last measurement."""
        fig = plots.plot_s_rel_heatmap(make_pair_iters(), class_names=NAMES)
        panels = fig.axes[1:]  # fig.axes[0] is the shared colorbar
        assert len(panels) == 3
        for ax, m in zip(panels, [0, 7, 13]):
            expected = [[2.0 * base(num, den, m) for num in range(3)] for den in range(3)]
            np.testing.assert_allclose(self.cells(ax), expected)
            assert f"measurement {m + 1}/{N_MEAS}" in ax.get_title()
            texts = {t.get_text() for t in ax.texts}
            assert f"{expected[2][1]:.3g}" in texts
        assert [t.get_text() for t in panels[0].get_yticklabels()] == NAMES

    def test_shared_and_log_color_scale(self):
        """One norm over all panels; values spanning > 2 decades get a log scale."""
        fig = plots.plot_s_rel_heatmap(make_pair_iters())
        norms = {id(ax.collections[0].norm) for ax in fig.axes[1:]}
        norm = fig.axes[1].collections[0].norm
        assert len(norms) == 1 and isinstance(norm, LogNorm)
        assert (norm.vmin, norm.vmax) == (2.0, 2.0 * base(2, 2, 13))
        linear = plots.plot_s_rel_heatmap(make_pair_iters(), at=0).axes[1].collections[0].norm
        assert not isinstance(linear, LogNorm)
        assert (linear.vmin, linear.vmax) == (2.0, 2.0 * base(2, 2, 0))

    def test_signed_values_diverging_scale(self):
        pair_iters = [[[v - 20.0 for v in pair] for pair in run] for run in make_pair_iters()]
        mesh = plots.plot_s_rel_heatmap(pair_iters, at=0).axes[1].collections[0]
        assert mesh.norm.vmin == -mesh.norm.vmax
        with pytest.raises(ValueError, match="log_color"):
            plots.plot_s_rel_heatmap(pair_iters, at=0, log_color=True)

    def test_from_details(self):
        """Cells: nanmean of individual values pooled over runs; an all-NaN cell stays blank."""
        details = make_details()
        values = details["pair_values"].astype(float)
        fig = plots.plot_s_rel_heatmap(details, at=[4, -1])
        for ax, m in zip(fig.axes[1:], [4, 13]):
            for den in range(3):
                for num in range(3):
                    pool = values[:, m, den, num].ravel()
                    pool = pool[np.isfinite(pool)]
                    cell = self.cells(ax)[den, num]
                    if pool.size:
                        assert cell == pytest.approx(pool.sum() / pool.size)
                    else:
                        assert np.isnan(cell)
        assert "n/a" in {t.get_text() for t in fig.axes[1].texts}
        assert "epoch" in fig.axes[1].get_title()

    def test_bad_index(self):
        with pytest.raises(ValueError, match="measurement indices"):
            plots.plot_s_rel_heatmap(make_pair_iters(), at=[0, 14])


class TestPlotAll:
    def test_files_and_folders_with_details(self, tmp_path):
        paths = plots.plot_all(make_pair_iters(), make_metrics(), make_details(), tmp_path)
        folder = tmp_path / "CIFAR_10" / "KL_Div"
        names = {f"s_rel_den_{c}{s}.png" for c in NAMES for s in ("", "_median")}
        names |= {"metrics.png", "s_rel_heatmap.png"}
        assert {p.name for p in paths} == names
        assert {p.name for p in folder.iterdir()} == names
        assert all(p.parent == folder for p in paths)
        assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)

    def test_published_pickles_without_details(self, tmp_path):
        """Pickle paths, no class names, no epochs: class_<i> files in SVHN/KL_Published."""
        pair_path = io.save_pickle(make_pair_iters(), tmp_path / "pair_iters.pkl")
        metrics_path = io.save_pickle(make_metrics(), tmp_path / "metrics.pkl")
        paths = plots.plot_all(
            pair_path,
            metrics_path,
            plots_dir=tmp_path / "Plots",
            dataset="svhn",
            definition="kl_published",
        )
        folder = tmp_path / "Plots" / "SVHN" / "KL_Published"
        expected = {f"s_rel_den_class_{c}.png" for c in range(3)} | {
            "metrics.png",
            "s_rel_heatmap.png",
        }
        assert {p.name for p in folder.iterdir()} == expected == {p.name for p in paths}

    def test_measurement_epochs_inferred(self):
        np.testing.assert_allclose(plots.infer_measure_epochs(N_MEAS, N_EPOCHS), np.arange(14) / 7)

    @pytest.mark.parametrize(
        "dataset, definition, folder",
        [
            ("cifar100", "suhe", "CIFAR_100/SuHe"),
            ("digits", "kl", "DIGITS/KL_Div"),
            ("mnist", "kl_published", "MNIST/KL_Published"),
        ],
    )
    def test_plot_dir(self, tmp_path, dataset, definition, folder):
        assert plots.plot_dir(tmp_path, dataset, definition) == tmp_path / folder

    def test_missing_names_write_nothing(self, tmp_path):
        with pytest.raises(ValueError, match="dataset and definition"):
            plots.plot_all(make_pair_iters(), make_metrics(), plots_dir=tmp_path, dataset="svhn")
        with pytest.raises(ValueError, match="definition"):
            plots.plot_all(make_pair_iters(), make_metrics(), None, tmp_path, "svhn", "kl2")
        details = make_details()
        details["class_names"] = NAMES[:2]
        with pytest.raises(ValueError, match="class names"):
            plots.plot_all(make_pair_iters(), make_metrics(), details, tmp_path)
        assert list(tmp_path.iterdir()) == []


def test_plot_all_uses_log_axis_for_heavy_tails(tmp_path, monkeypatch):
    """Values spanning more than two decades get a log y axis in the saved curves."""
    seen = []
    original = plots.plot_s_rel_curves
    monkeypatch.setattr(plots, "plot_s_rel_curves", lambda *a, **k: seen.append(k["log_y"]) or original(*a, **k))
    metrics = {k: [[1.0, 2.0]] for k in ("train_accs", "train_losses", "test_accs", "test_losses")}
    tame = [[[1.0, 2.0, 3.0]] * 9]
    wild = [[[0.5, 2.0, 300.0]] * 9]
    plots.plot_all(tame, metrics, plots_dir=tmp_path, dataset="d", definition="kl")
    plots.plot_all(wild, metrics, plots_dir=tmp_path, dataset="d", definition="kl")
    assert seen == [False] * 3 + [True] * 3
