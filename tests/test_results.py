"""Result pickles: published structure, round trip, checks on what is read."""
import pickle

import numpy as np
import pytest

from srel.io import ResultFileError
from srel.results import list_results, load_results, result_paths, save_results, summary_table
from srel.training import ExperimentConfig, run_experiment


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    config = ExperimentConfig(dataset="digits", train_per_class=8, test_per_class=3, epochs=2,
                              runs=2, k=2, batch_size=8, measure_every=3, definitions=("kl", "suhe"))
    result = run_experiment(config, verbose=False)
    assets = tmp_path_factory.mktemp("Assets")
    save_results(result, assets)
    return result, assets


def test_published_structure_on_disk(saved):
    result, assets = saved
    with open(assets / "pair_iters_digits_kl.pkl", "rb") as f:
        pair_iters = pickle.load(f)
    # list over runs -> list over 9 class pairs -> list of floats over measurements (2 per run)
    assert type(pair_iters) is list and len(pair_iters) == 2
    assert all(type(run) is list and len(run) == 9 for run in pair_iters)
    assert all(type(s) is list and len(s) == 2 and all(type(v) is float for v in s)
               for run in pair_iters for s in run)
    with open(assets / "metrics_dictionary_digits_kl.pkl", "rb") as f:
        metrics = pickle.load(f)
    assert sorted(metrics) == ["test_accs", "test_losses", "train_accs", "train_losses"]
    assert all(len(metrics[k]) == 2 and len(metrics[k][0]) == 2 for k in metrics)


def test_round_trip(saved):
    result, assets = saved
    for d in ("kl", "suhe"):
        loaded = load_results(assets, "digits", d)
        assert loaded["pair_iters"] == result.pair_iters[d]
        assert loaded["metrics"] == result.metrics
        details = loaded["details"]
        np.testing.assert_array_equal(details["pair_values"], result.pair_values[d])
        assert details["params"] == result.config
        assert details["class_names"] == ["0", "2", "4"]
        assert details["pair_order"][:3] == [(0, 0), (1, 0), (2, 0)]
        assert {"torch", "torchvision", "numpy", "python"} <= set(details["versions"])
        assert details["git_commit"]
    assert list_results(assets) == [("digits", "kl"), ("digits", "suhe")]


def test_missing_and_malformed_results_are_named(tmp_path, saved):
    with pytest.raises(FileNotFoundError, match="pair_iters_svhn_kl.pkl not found"):
        load_results(tmp_path, "svhn", "kl")
    paths = result_paths(tmp_path, "x", "kl")
    with open(paths["pair_iters"], "wb") as f:
        pickle.dump([[[1.0]] * 8], f)  # 8 pairs is not C*C
    with open(paths["metrics"], "wb") as f:
        pickle.dump({"train_accs": []}, f)
    with pytest.raises(ResultFileError, match="8 class pairs"):
        load_results(tmp_path, "x", "kl")
    paths["pair_iters"].write_bytes(saved[1].joinpath("pair_iters_digits_kl.pkl").read_bytes()[:40])
    with pytest.raises(ResultFileError, match="truncated or corrupted"):
        load_results(tmp_path, "x", "kl")


def test_summary_table_own_vs_cross():
    # 1 run, 2 classes, pairs (0,0),(1,0),(1,1),(0,1), 2 measurements
    pair_iters = [[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, np.nan]]]
    table = summary_table(pair_iters, ["a", "b"])
    assert table.loc["a", "own@0"] == 1.0 and table.loc["a", "cross@1"] == 4.0
    assert table.loc["b", "own@1"] == 6.0 and np.isnan(table.loc["b", "cross@1"])
    assert table.loc["all", "own@0"] == 3.0


@pytest.mark.parametrize("pair_iters, metrics, match", [
    ([[1.0, 2.0, 3.0, 4.0]], None, "lists of S_rel values over measurements"),
    ([[["a"], ["b"], ["c"], ["d"]]], None, "S_rel values must be numbers"),
    ([[[], [], [], []]], None, "holds no measurements"),
    (None, {"train_accs": 5, "train_losses": [[1.0]], "test_accs": [[1.0]],
            "test_losses": [[1.0]]}, "'train_accs' must be a non-empty list over runs"),
    (None, {"train_accs": [], "train_losses": [], "test_accs": [], "test_losses": []},
     "'train_accs' must be a non-empty list over runs"),
])
def test_wrong_structures_are_named(tmp_path, pair_iters, metrics, match):
    """Pickles of the wrong structure fail in load_results, not later in a plot."""
    paths = result_paths(tmp_path, "x", "kl")
    good_metrics = {k: [[1.0]] for k in ("train_accs", "train_losses", "test_accs", "test_losses")}
    with open(paths["pair_iters"], "wb") as f:
        pickle.dump(pair_iters or [[[1.0]] * 4], f)
    with open(paths["metrics"], "wb") as f:
        pickle.dump(metrics or good_metrics, f)
    with pytest.raises(ResultFileError, match=match):
        load_results(tmp_path, "x", "kl")


def test_sidecar_that_is_not_a_dict_is_named(tmp_path, saved):
    for key in ("pair_iters", "metrics"):
        src = result_paths(saved[1], "digits", "kl")[key]
        result_paths(tmp_path, "digits", "kl")[key].write_bytes(src.read_bytes())
    with open(result_paths(tmp_path, "digits", "kl")["details"], "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(ResultFileError, match="details_digits_kl.pkl: expected the sidecar dict"):
        load_results(tmp_path, "digits", "kl")


def test_list_results_missing_folder_and_stray_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_assets is not a folder"):
        list_results(tmp_path / "no_such_assets")
    for name in ("pair_iters_cifar10_kl.pkl", "pair_iters_cifar10_kl_old.pkl", "pair_iters_kl.pkl"):
        (tmp_path / name).write_bytes(b"")
    with pytest.warns(UserWarning, match="pair_iters_cifar10_kl_old.pkl.*pair_iters_kl.pkl"):
        assert list_results(tmp_path) == [("cifar10", "kl")]
