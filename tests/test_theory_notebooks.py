"""Theory and regression notebooks run under papermill with tiny parameters and write results."""
import math

import numpy as np
import papermill as pm
import pytest

from srel.io import REPO_ROOT, load_pickle

SCRIPTS = REPO_ROOT / "Scripts"

TINY = {
    "Theory_Random_Features": dict(
        n_features=[4], n_per_class=30, dim=5, n_times=6, n_runs=2, n_pairs=3, t_max=1e6
    ),
    "Theory_ReLU_Homogeneous": dict(
        gate_dim=3, gate_n_train=20, gate_angles=[60, 150], hom_dim=6, hom_relevant=2,
        hom_degrees=[1, 3], hom_init_scales=[0.1], n_pairs=3, n_times=8,
    ),
    "Regression_Phases": dict(
        dim=3, n_train=32, n_probe=5, width=8, n_steps=40, eval_every=10, seeds=[0]
    ),
}
OUTPUTS = {
    "Theory_Random_Features": ("theory_random_features.pkl",
                               ["Theory/random_features_paper.png",
                                "Theory/random_features_strong_ridge.png"]),
    "Theory_ReLU_Homogeneous": ("theory_relu_homogeneous.pkl",
                                ["Theory/relu_gate.png", "Theory/homogeneous.png"]),
    "Regression_Phases": ("regression_phases.pkl", ["Regression/regression_phases.png"]),
}


def _all_finite(arrays) -> bool:
    return all(np.all(np.isfinite(np.asarray(a, dtype=float))) for a in arrays)


def check_random_features(found):
    assert set(found) >= {"paper", "strong_ridge", "summary"}
    for name in ("paper", "strong_ridge"):
        result = found[name]
        assert result["times"].shape == (6,)
        for kind in ("inter", "intra"):
            out = result[4][kind]
            assert out["loss"].shape == out["s_rel_01"].shape == out["s_rel_10"].shape == (2, 6)
            assert _all_finite(out.values())
        assert len(found["summary"][name]) == 4  # 1 feature count x 2 kinds x 2 directions


def check_relu_homogeneous(found):
    gate, hom = found["relu_gate"], found["homogeneous"]
    for angle in (60, 150):
        assert _all_finite([gate[angle]["loss"], gate[angle]["cosine"]])
        assert gate[angle]["intra"].shape == (8,)
    for degree in (1, 3):
        out = hom[(degree, 0.1)]
        assert _all_finite([out["loss"], out["intra"], out["inter"]])
    assert len(found["summary"]["homogeneous"]) == 2


def check_regression(found):
    assert [run["seed"] for run in found["runs"]] == [0]
    run = found["runs"][0]
    for name in ("mlp", "linear"):
        assert run[name]["steps"][-1] == 40
        assert _all_finite([run[name][k] for k in ("loss", "median", "q25", "q75")])
    assert found["summary"]["n_seeds"] == 1
    assert math.isfinite(found["summary"]["mlp_median_end"][0])


CHECKS = {
    "Theory_Random_Features": check_random_features,
    "Theory_ReLU_Homogeneous": check_relu_homogeneous,
    "Regression_Phases": check_regression,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TINY))
def test_notebook_runs_tiny(name, tmp_path):
    assets, plots = tmp_path / "Assets", tmp_path / "Plots"
    pm.execute_notebook(
        str(SCRIPTS / f"{name}.ipynb"),
        str(tmp_path / f"{name}.out.ipynb"),
        parameters={**TINY[name], "assets_dir": str(assets), "plots_dir": str(plots)},
        cwd=str(tmp_path),
        progress_bar=False,
        kernel_name="python3",
    )
    pickle_name, figures = OUTPUTS[name]
    CHECKS[name](load_pickle(assets / pickle_name))
    for figure in figures:
        assert (plots / figure).stat().st_size > 10_000
