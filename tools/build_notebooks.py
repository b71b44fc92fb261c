"""Write the classification notebooks in Scripts/ from one template (variants are parameters).

Run from anywhere: `python tools/build_notebooks.py`. Notebooks are stored without outputs.
"""
import json
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

SCRIPTS = Path(__file__).resolve().parent.parent / "Scripts"
NOTES = Path(__file__).resolve().parent / "notebook_notes"  # <notebook name>.md: closing note

PAPER = {
    "svhn": dict(title="SVHN", classes="digits 0, 2, 4", counts="4000 / 800", batch=256),
    "cifar10": dict(
        title="CIFAR-10", classes="airplane, automobile, ship", counts="5000 / 1000", batch=256
    ),
    "cifar100": dict(
        title="CIFAR-100", classes="motorcycle, orange, wardrobe", counts="500 / 100", batch=25
    ),
    "digits": dict(
        title="scikit-learn digits (offline default)",
        classes="digits 0, 2, 4",
        counts="140 / 30",
        batch=32,
    ),
}

FORMS = {
    "kl": "the KL-divergence form, KL(p(x'; w) || p(x'; w+)) / KL(p(x; w) || p(x; w+))",
    "suhe": "He & Su's original form, ||p(x'; w+) - p(x'; w)|| / ||p(x; w+) - p(x; w)||",
}

PARAMETERS = """\
dataset = {dataset:<22} # "svhn", "cifar10", "cifar100", or "digits" (bundled, offline)
classes = None                   # names or labels, relabelled 0..C-1 in order; None: {classes}
train_per_class = None           # int, "all", or None for the paper's {counts} (train / test)
test_per_class = None
epochs = 7
runs = 3                         # independent runs; seeds derived from `seed`
seed = 0
batch_size = None                # None: the paper's {batch}
lr = 1e-4                        # Adam learning rate
weight_decay = 1e-4
measure_every = {measure_every:<16} # batches between S_rel measurements, counted from batch 0
k = 20                           # reference points per class (S_rel over k x k pairs)
definition = {definition:<19} # "kl", "suhe", "kl_published", or a list of them
update = "adam"                  # one-example update: "adam" (paper) or "sgd" (He & Su)
update_lr = 1e-4                 # step size of that update
eps = 1e-8                       # floor of the S_rel denominator
include_self = False             # keep self-pairs (S_rel(x, x) is 1) in own-class means
measure_dtype = "float32"        # "float64" for a reference-precision measurement (slow)
data_root = "data"               # torchvision files or <root>/{{train,test}}/<class>/*.png
download = True                  # let torchvision download what data_root lacks (online)
device = "auto"                  # "auto", "cpu", "cuda", ...
assets_dir = "Assets"            # relative paths are relative to the repository root
plots_dir = "Plots"
checkpoint_dir = "Checkpoints"   # per-epoch checkpoints to resume from; None: off"""


def classification_notebook(dataset: str, definition, note: str):
    paper = PAPER[dataset]
    defs = [definition] if isinstance(definition, str) else list(definition)
    forms = "; ".join(FORMS[d] for d in defs)
    cells = [
        new_markdown_cell(
            f"# Local elasticity on {paper['title']}: {' and '.join(d.upper() for d in defs)}\n\n"
            "When Adam takes one step on a single training example x, how much does the "
            "prediction move at another example x', relative to how much it moved at x? We "
            f"track S_rel(x, x') in {forms} while training a ResNet-18 without normalization "
            f"layers on the classes {paper['classes']}, and ask whether updates prefer their own "
            "class (Dan et al., arXiv 2111.01166, section 4)."
        ),
        new_code_cell("import utils\n\nprint(utils.pick_device())"),
        new_code_cell(
            PARAMETERS.format(
                dataset=json.dumps(dataset),
                definition=json.dumps(definition),
                measure_every=str(5 if dataset == "digits" else 9),
                **paper,
            ),
            metadata={"tags": ["parameters"]},
        ),
        new_markdown_cell("## Data\nLoading fails here, before any training, if the data or a class is missing."),
        new_code_cell(
            "config = utils.config_from_notebook(globals())  # rejects misspelt -p names\n"
            "subset = utils.load_subset(config)\n"
            "print(utils.describe_subset(subset))"
        ),
        new_markdown_cell(
            "## Train and measure\nOne line per epoch. Rerunning with the same parameters resumes "
            "from the last checkpoint."
        ),
        new_code_cell(
            "checkpoints = checkpoint_dir and utils.checkpoint_dir(checkpoint_dir, dataset, config.definitions)\n"
            "result = utils.run_experiment(config, subset, checkpoint_dir=checkpoints)\n"
            "for path in utils.save_results(result, assets_dir):\n"
            "    print('wrote', path)"
        ),
        new_markdown_cell("## Accuracy and loss"),
        new_code_cell("utils.plot_metrics(result.metrics, title=f'{dataset}: ResNet-18 without normalization')"),
        new_markdown_cell(
            "## S_rel per class of the updated example\nMean over runs with a +-1 std band; "
            "the `_median` figures written to Plots/ show the median and interquartile range "
            "over all k x k pairs, which is robust to the heavy tail."
        ),
        new_code_cell(
            "for d in config.definitions:\n"
            "    for den in range(len(subset.class_names)):\n"
            "        display(utils.plot_s_rel_curves(\n"
            "            result.pair_iters[d], den, subset.class_names, result.measure_epochs,\n"
            "            title=f'{dataset} {d}: update on {subset.class_names[den]}'))"
        ),
        new_code_cell(
            "for d in config.definitions:\n"
            "    display(utils.plot_s_rel_heatmap(result.pair_iters[d], class_names=subset.class_names,\n"
            "                                     measure_epochs=result.measure_epochs))"
        ),
        new_markdown_cell("## Summary and saved plots"),
        new_code_cell(
            "print('final test accuracy per run (%):', [round(a[-1], 1) for a in result.metrics['test_accs']])\n"
            "for d in config.definitions:\n"
            "    print(f'S_rel {d}: own class vs other classes, first and last measurement')\n"
            "    display(utils.summary_table(result.pair_iters[d], subset.class_names))\n"
            "written = utils.plot_result(result, plots_dir)\n"
            "print(f'{len(written)} figures under', written[0].parent.parent)"
        ),
        new_markdown_cell(note),
    ]
    return new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
    )


NOT_RUN = (
    "## What we saw\n\nNot run at full scale on this dataset here: the machine that built this "
    "suite has no copy of it and no internet. Run it with `download=True` online or `data_root` "
    "pointing to a local copy; the paper reports that in the KL form S_rel of the own class "
    "rises above that of the other classes during training."
)


def replot_notebook():
    cells = [
        new_markdown_cell(
            "# Replot from saved pickles\n\nRegenerates every classification figure from the "
            "pickles in `assets_dir` without training: ours (with their `details_*` sidecar) and "
            "pickles of the paper's published structure (`pair_iters_<dataset>_<definition>.pkl` "
            "and `metrics_dictionary_<dataset>_<definition>.pkl` alone; epochs are then inferred "
            "from the number of measurements per epoch)."
        ),
        new_code_cell("import utils"),
        new_code_cell(
            'assets_dir = "Assets"     # folder holding pair_iters_*.pkl / metrics_dictionary_*.pkl\n'
            'plots_dir = "Plots"       # figures go to <plots_dir>/<DATASET>/<KL_Div|SuHe|...>/\n'
            "only = None               # e.g. [\"cifar10_kl\"] to replot a subset; None: everything",
            metadata={"tags": ["parameters"]},
        ),
        new_code_cell(
            "found = [(ds, d) for ds, d in utils.list_results(assets_dir) if not only or f'{ds}_{d}' in only]\n"
            "print(len(found), 'result sets:', ', '.join(f'{ds}/{d}' for ds, d in found))"
        ),
        new_code_cell(
            "for dataset, definition in found:\n"
            "    loaded = utils.load_results(assets_dir, dataset, definition)\n"
            "    written = utils.plot_all(**loaded, plots_dir=plots_dir, dataset=dataset, definition=definition)\n"
            "    names = (loaded['details'] or {}).get('class_names')\n"
            "    print(f'{dataset}/{definition}: {len(written)} figures in {written[0].parent}')\n"
            "    display(utils.summary_table(loaded['pair_iters'], names))"
        ),
        new_code_cell(
            "for dataset, definition in found:\n"
            "    loaded = utils.load_results(assets_dir, dataset, definition)\n"
            "    display(utils.plot_s_rel_heatmap(loaded['details'] or loaded['pair_iters'],\n"
            "                                     title=f'{dataset} {definition}'))"
        ),
    ]
    return new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
    )


def write(nb, path: Path) -> None:
    """Write with stable cell ids so that rebuilding an unchanged notebook changes no bytes."""
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"
    nbformat.write(nb, path)
    print("wrote", path)


def main():
    SCRIPTS.mkdir(exist_ok=True)
    notes = {}
    for path in NOTES.glob("*.md"):
        notes[path.stem] = path.read_text().strip()
    variants = {
        "SVHN_KL": ("svhn", "kl"),
        "SVHN_SuHe": ("svhn", "suhe"),
        "CIFAR_10_KL": ("cifar10", "kl"),
        "CIFAR_10_SuHe": ("cifar10", "suhe"),
        "CIFAR_100_KL": ("cifar100", "kl"),
        "CIFAR_100_SuHe": ("cifar100", "suhe"),
        "Digits": ("digits", ["kl", "suhe"]),
    }
    for name, (dataset, definition) in variants.items():
        nb = classification_notebook(dataset, definition, notes.get(name, NOT_RUN))
        write(nb, SCRIPTS / f"{name}.ipynb")
    write(replot_notebook(), SCRIPTS / "Replot.ipynb")


if __name__ == "__main__":
    main()
