"""Every notebook in Scripts/ runs under papermill with tiny parameters and writes what it should."""
import pickle
import shutil
import uuid

import numpy as np
import papermill as pm
import pytest
from PIL import Image

from srel.data import DATASETS
from srel.io import REPO_ROOT
from srel.results import check_pair_iters, load_results

SCRIPTS = REPO_ROOT / "Scripts"
SHARED_CIFAR10 = REPO_ROOT.parent / "shared" / "data" / "cifar10"

CLASSIFICATION = {
    "SVHN_KL": ("svhn", ["kl"]),
    "SVHN_SuHe": ("svhn", ["suhe"]),
    "CIFAR_10_KL": ("cifar10", ["kl"]),
    "CIFAR_10_SuHe": ("cifar10", ["suhe"]),
    "CIFAR_100_KL": ("cifar100", ["kl"]),
    "CIFAR_100_SuHe": ("cifar100", ["suhe"]),
    "Digits": ("digits", ["kl", "suhe"]),
}
TINY = dict(epochs=1, runs=1, train_per_class=6, test_per_class=3, k=2, batch_size=6, measure_every=1)


def write_imagefolder(root, dataset, n_train=6, n_test=3, seed=0):
    """A tiny ImageFolder tree with the paper's classes of `dataset` (random 32x32 images)."""
    rng = np.random.default_rng(seed)
    spec = DATASETS[dataset]
    names = [spec.class_names[c] if isinstance(c, int) else c for c in spec.default_classes]
    for split, n in (("train", n_train), ("test", n_test)):
        for name in names:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:05d}.png")
    return root


def run_notebook(name, tmp_path, cwd=None, **parameters):
    out = tmp_path / f"{name}.out.ipynb"
    pm.execute_notebook(
        str(SCRIPTS / f"{name}.ipynb"),
        str(out),
        parameters=parameters,
        cwd=str(cwd or tmp_path),
        progress_bar=False,
        kernel_name="python3",
    )
    return out


def check_outputs(assets, plots, dataset, definitions, n_epochs, n_runs, n_measurements):
    for d in definitions:
        loaded = load_results(assets, dataset, d)
        runs, n_classes, m = check_pair_iters(loaded["pair_iters"])
        assert (runs, n_classes, m) == (n_runs, 3, n_measurements)
        values = np.asarray(loaded["pair_iters"], dtype=float)
        assert np.isfinite(values).all(), f"{d}: non-finite S_rel {values}"
        for key, series in loaded["metrics"].items():
            assert len(series) == n_runs and all(len(s) == n_epochs for s in series), key
            assert np.isfinite(series).all()
        details = loaded["details"]
        assert details["params"]["epochs"] == n_epochs
        assert len(details["measure_epochs"]) == n_measurements
        pngs = list(plots.rglob("*.png"))
        folder = {"kl": "KL_Div", "suhe": "SuHe"}[d]
        assert any(p.parent.name == folder for p in pngs), pngs


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CLASSIFICATION))
def test_classification_notebook_runs_tiny(name, tmp_path):
    dataset, definitions = CLASSIFICATION[name]
    params = dict(TINY, assets_dir=str(tmp_path / "Assets"), plots_dir=str(tmp_path / "Plots"),
                  checkpoint_dir=str(tmp_path / "Checkpoints"), download=False)
    if dataset != "digits":
        params["data_root"] = str(write_imagefolder(tmp_path / "data", dataset))
    run_notebook(name, tmp_path, **params)
    # 18 training images, batch 6 -> 3 batches, measured at each
    check_outputs(tmp_path / "Assets", tmp_path / "Plots", dataset, definitions, 1, 1, 3)


@pytest.mark.slow
def test_parameter_override_changes_the_run_from_scripts_folder(tmp_path):
    """Run from Scripts/ with relative output folders: they land under the repository root;
    -p epochs 2 / runs 2 really change the run."""
    rel = f"runs/test-{uuid.uuid4().hex[:8]}"
    try:
        run_notebook(
            "Digits", tmp_path, cwd=SCRIPTS,
            **dict(TINY, epochs=2, runs=2, definition="kl", assets_dir=f"{rel}/Assets",
                   plots_dir=f"{rel}/Plots", checkpoint_dir=None),
        )
        check_outputs(REPO_ROOT / rel / "Assets", REPO_ROOT / rel / "Plots", "digits", ["kl"], 2, 2, 6)
        assert not (SCRIPTS / rel).exists()
    finally:
        shutil.rmtree(REPO_ROOT / rel, ignore_errors=True)


@pytest.mark.slow
def test_missing_dataset_fails_in_first_cells_and_writes_nothing(tmp_path):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    with pytest.raises(pm.PapermillExecutionError) as info:
        run_notebook(
            "CIFAR_100_KL", tmp_path, data_root=str(empty), download=False,
            assets_dir=str(tmp_path / "Assets"), plots_dir=str(tmp_path / "Plots"),
        )
    message = str(info.value)
    assert "FileNotFoundError" in message and "cifar100" in message and str(empty) in message
    assert info.value.exec_count <= 4  # imports, parameters, injected parameters, data
    assert not (tmp_path / "Assets").exists() and not (tmp_path / "Plots").exists()


@pytest.mark.slow
def test_misspelt_parameter_fails_before_training(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match="Unknown notebook parameter"):
        run_notebook("Digits", tmp_path, epoch=1, assets_dir=str(tmp_path / "Assets"))
    assert not (tmp_path / "Assets").exists()


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR10.is_dir(), reason="no real CIFAR-10 sample beside the repo")
def test_cifar10_kl_on_real_images_learns(tmp_path):
    """Real CIFAR-10 airplane / automobile / ship (ImageFolder): above chance after training."""
    run_notebook(
        "CIFAR_10_KL", tmp_path, data_root=str(SHARED_CIFAR10), train_per_class=150,
        test_per_class=60, epochs=4, runs=1, batch_size=32, measure_every=8, k=5,
        assets_dir=str(tmp_path / "Assets"), plots_dir=str(tmp_path / "Plots"), checkpoint_dir=None,
    )
    loaded = load_results(tmp_path / "Assets", "cifar10", "kl")
    final = loaded["metrics"]["test_accs"][0][-1]
    assert final > 100 / 3 + 10, f"test accuracy {final:.1f}% is not above chance (33.3%)"
    assert loaded["details"]["class_names"] == ["airplane", "automobile", "ship"]
    assert "ImageFolder" in loaded["details"]["source"]


@pytest.mark.slow
def test_replot_renders_published_structure(tmp_path):
    """Pickles with only the published structure (no sidecar) replot without training."""
    assets, plots = tmp_path / "Assets", tmp_path / "Plots"
    assets.mkdir()
    rng = np.random.default_rng(0)
    pair_iters = [[list(rng.lognormal(size=14)) for _ in range(9)] for _ in range(2)]
    metrics = {k: [list(rng.uniform(0, 100, 2)) for _ in range(2)]
               for k in ("train_accs", "train_losses", "test_accs", "test_losses")}
    for stem, obj in (("pair_iters", pair_iters), ("metrics_dictionary", metrics)):
        with open(assets / f"{stem}_cifar100_kl.pkl", "wb") as f:
            pickle.dump(obj, f)
    out = run_notebook("Replot", tmp_path, assets_dir=str(assets), plots_dir=str(plots))
    written = sorted(p.name for p in (plots / "CIFAR_100" / "KL_Div").glob("*.png"))
    assert written == ["metrics.png", "s_rel_den_class_0.png", "s_rel_den_class_1.png",
                       "s_rel_den_class_2.png", "s_rel_heatmap.png"]
    assert "1 result sets: cifar100/kl" in out.read_text()
