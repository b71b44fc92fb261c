"""The one import a notebook needs: re-exports the public names of the `srel` package.

Data -> model -> S_rel measurement -> training -> results -> plots, in the order an experiment
runs. See srel/__init__.py for the references.
"""
from srel.checkpoint import CheckpointStore, checkpoint_dir
from srel.data import (
    DATASETS,
    ClassSubset,
    DatasetSpec,
    load_class_subset,
    make_loader,
    normalize_images,
)
from srel.elasticity import (
    DEFINITIONS,
    UPDATE_RULES,
    SRelMeasurement,
    compute_output_changes,
    measure_s_rel,
    output_change,
    pair_order,
    select_reference_points,
    summarize_s_rel,
)
from srel.io import REPO_ROOT, ResultFileError, load_pickle, resolve_path, save_figure, save_pickle
from srel.models import count_parameters, make_resnet18, pick_device
from srel.results import (
    list_results,
    load_results,
    plot_result,
    result_paths,
    save_results,
    summary_table,
)
from srel.training import (
    ExperimentConfig,
    ExperimentResult,
    config_from_notebook,
    describe_subset,
    load_subset,
    run_experiment,
)
from srel.plots import (
    infer_measure_epochs,
    plot_all,
    plot_dir,
    plot_metrics,
    plot_s_rel_curves,
    plot_s_rel_heatmap,
)
from srel import regression, theory  # closed forms under gradient flow; neural regression
