"""Training loop: bookkeeping of measurements, metrics and per-pair values; bad parameters."""
import numpy as np
import pytest
import torch

from srel.data import load_class_subset
from srel.elasticity import pair_order
from srel.training import ExperimentConfig, config_from_notebook, derive_seed, run_experiment

TINY = dict(dataset="digits", train_per_class=10, test_per_class=4, epochs=2, runs=2, k=2,
            batch_size=8, measure_every=2, definitions=("kl", "suhe"))


@pytest.fixture(scope="module")
def tiny_result():
    return run_experiment(ExperimentConfig(**TINY), verbose=False)


class TestRunExperiment:
    def test_measurement_schedule(self, tiny_result):
        """30 images, batch 8 -> 4 batches; measured at batches 0 and 2 of each epoch."""
        assert tiny_result.measure_epochs == [0.0, 0.5, 1.0, 1.5]
        for d in ("kl", "suhe"):
            assert np.shape(tiny_result.pair_iters[d]) == (2, 9, 4)
            assert tiny_result.pair_values[d].shape == (2, 4, 3, 3, 2, 2)
            assert tiny_result.n_floored[d].shape == (2, 4, 3, 3)

    def test_pair_iters_are_means_of_pair_values_in_pair_order(self, tiny_result):
        for d in ("kl", "suhe"):
            values = tiny_result.pair_values[d].astype(np.float64)
            for p, (num, den) in enumerate(pair_order(3)):
                expected = np.nanmean(values[:, :, den, num].reshape(2, 4, -1), axis=-1)
                np.testing.assert_allclose(tiny_result.pair_iters[d][0][p], expected[0], rtol=1e-6)
                np.testing.assert_allclose(tiny_result.pair_iters[d][1][p], expected[1], rtol=1e-6)

    def test_metrics_per_epoch_and_runs_differ(self, tiny_result):
        for key, series in tiny_result.metrics.items():
            assert np.shape(series) == (2, 2), key
        assert all(0 <= a <= 100 for run in tiny_result.metrics["test_accs"] for a in run)
        assert tiny_result.seeds[0] != tiny_result.seeds[1]
        assert tiny_result.pair_iters["kl"][0] != tiny_result.pair_iters["kl"][1]

    def test_reference_points_are_k_per_class_from_training_split(self, tiny_result):
        subset = load_class_subset("digits", None, 10, 4)
        for idx in tiny_result.reference_indices:
            assert np.array_equal(subset.train_labels[idx].numpy(), [0, 0, 1, 1, 2, 2])

    def test_first_measurement_is_at_initialization(self, tiny_result):
        """Measurement 0 of run r uses the untrained model seeded with the run's seed."""
        from srel.data import normalize_images
        from srel.elasticity import measure_s_rel
        from srel.models import make_resnet18

        subset = load_class_subset("digits", None, 10, 4)
        torch.manual_seed(tiny_result.seeds[1])
        model = make_resnet18(3)
        idx = tiny_result.reference_indices[1]
        found = measure_s_rel(model, normalize_images(subset.train_images[idx]),
                              subset.train_labels[idx], 3, ("kl",))
        np.testing.assert_allclose(found["kl"].pair_series(),
                                   [s[0] for s in tiny_result.pair_iters["kl"][1]], rtol=1e-5)


def test_derived_seeds_are_distinct_and_stable():
    seeds = {derive_seed(0, run, epoch) for run in range(5) for epoch in range(10)}
    assert len(seeds) == 50
    assert derive_seed(3, 1) == derive_seed(3, 1) and derive_seed(3, 1) != derive_seed(1, 3)


class TestBadParameters:
    @pytest.mark.parametrize(
        "override, message",
        [
            (dict(epochs=0), "epochs must be a positive integer"),
            (dict(runs=1.5), "runs must be a positive integer"),
            (dict(k=-1), "k must be a positive integer"),
            (dict(lr=0), "lr must be positive"),
            (dict(batch_size=0), "batch_size must be a positive integer"),
            (dict(definitions=("kl", "js")), "Unknown S_rel definition"),
            (dict(update="rmsprop"), "Unknown update rule"),
            (dict(dataset="mnist"), "Unknown dataset 'mnist'"),
            (dict(measure_dtype="float16"), "measure_dtype"),
            (dict(definitions=("kl", "kl")), "each S_rel definition once"),
            (dict(definitions=None), "each S_rel definition once"),
            (dict(classes=0), "classes must be a list"),  # papermill -p classes 0
            (dict(classes={"0", "2"}), "classes must be a list"),
            (dict(batch_size=8.0), "batch_size must be a positive integer"),
            (dict(lr="1e-4"), "lr must be a finite number.*write 1.0e-4"),  # YAML's 1e-4
            (dict(lr=None), "lr must be a finite number"),
            (dict(eps=float("inf")), "eps must be a finite number"),
            (dict(weight_decay=float("nan")), "weight_decay must be a finite number"),
            (dict(seed=-1), "seed must be a non-negative integer"),
            (dict(seed=1.5), "seed must be a non-negative integer"),
            (dict(include_self="false"), "include_self must be True or False"),  # -p x false
            (dict(download="False"), "download must be True or False"),
            (dict(device="gpu"), "Unknown device 'gpu'"),
            (dict(k=1), "k=1 leaves no own-class pairs"),
        ],
    )
    def test_config_errors(self, override, message):
        with pytest.raises(ValueError, match=message):
            ExperimentConfig(**dict(TINY, **override))

    def test_numpy_integers_are_accepted(self):
        config = ExperimentConfig(**dict(TINY, batch_size=np.int64(8), seed=np.int64(3)))
        assert config.batch_size == 8 and type(config.batch_size) is int

    @pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
    def test_cuda_without_cuda_fails_when_configured(self):
        with pytest.raises(ValueError, match="CUDA is not available"):
            ExperimentConfig(**dict(TINY, device="cuda"))

    def test_k_larger_than_class_fails_before_training(self, tmp_path):
        config = ExperimentConfig(**dict(TINY, k=11))
        with pytest.raises(ValueError, match="k=11 reference points per class"):
            run_experiment(config, checkpoint_dir=tmp_path / "ck", verbose=False)
        assert not (tmp_path / "ck").exists()

    def test_unknown_config_key(self):
        with pytest.raises(ValueError, match="Unknown experiment parameter"):
            ExperimentConfig.from_dict(dict(TINY, epoch=3))


class TestConfigFromNotebook:
    NOTEBOOK = dict(dataset="digits", definition=["kl", "suhe"], epochs=2, assets_dir="Assets",
                    plots_dir="Plots", checkpoint_dir=None)

    def test_maps_notebook_names_and_ignores_ipython_names(self):
        import types as pytypes

        namespace = dict(self.NOTEBOOK, In=[""], Out={}, _i1="", get_ipython=print,
                         utils=pytypes.ModuleType("utils"))
        config = config_from_notebook(namespace)
        assert config.definitions == ("kl", "suhe") and config.epochs == 2

    def test_misspelt_parameter_is_an_error(self):
        with pytest.raises(ValueError, match=r"Unknown notebook parameter\(s\) \['epoch'\]"):
            config_from_notebook(dict(self.NOTEBOOK, epoch=1))

    def test_output_folder_that_is_a_file(self, tmp_path):
        (tmp_path / "f").write_text("")
        with pytest.raises(NotADirectoryError, match="assets_dir"):
            config_from_notebook(dict(self.NOTEBOOK, assets_dir=str(tmp_path / "f")))
