"""Training with S_rel tracked along the way (Dan et al., arXiv 2111.01166, section 4).

Each run trains a fresh ResNet-18 without normalization layers with Adam and, every
`measure_every` batches of every epoch (counting from batch 0, before that batch's step),
measures S_rel on a fixed reference set of k training points per class. Randomness is drawn from
seeds derived from (seed, run, epoch), so an epoch replays identically from a checkpoint and two
runs with the same parameters give bit-identical results on the same device.
"""
import math
import numbers
import time
import types
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint as ckpt
from .data import DATASETS, load_class_subset, make_loader, normalize_images
from .elasticity import (
    check_options,
    measure_s_rel,
    pair_order,
    select_reference_points,
)
from .io import resolve_path
from .models import make_resnet18, pick_device
from .results import METRIC_KEYS


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass
class ExperimentConfig:
    """Every knob of a classification experiment; defaults are the paper's (dataset aside)."""

    dataset: str = "digits"
    classes: tuple = None  # names or labels, relabelled 0..C-1 in this order; None: paper's
    train_per_class: object = None  # int, "all", or None for the dataset's paper default
    test_per_class: object = None
    epochs: int = 7
    runs: int = 3  # independent runs, seeds derived from `seed`
    seed: int = 0
    batch_size: int = None  # None: the dataset's paper default (256, or 25 for CIFAR-100)
    lr: float = 1e-4  # Adam
    weight_decay: float = 1e-4
    measure_every: int = 9  # batches between S_rel measurements, counting from batch 0
    k: int = 20  # reference points per class
    definitions: tuple = ("kl",)  # any of "kl", "suhe", "kl_published"
    update: str = "adam"  # one-example update rule: "adam" (paper) or "sgd" (He & Su)
    update_lr: float = 1e-4  # step size of that one update
    eps: float = 1e-8  # floor of the S_rel denominator
    include_self: bool = False  # keep S_rel(x, x) = 1 in own-class means
    measure_dtype: str = "float32"  # "float64" for a reference-precision measurement
    data_root: str = None
    download: bool = False
    device: str = "auto"

    def __post_init__(self):
        names = (self.definitions,) if isinstance(self.definitions, str) else self.definitions
        if not isinstance(names, (list, tuple)) or len(set(names)) != len(names):
            raise ValueError(f"definitions must name each S_rel definition once (e.g. ['kl', "
                             f"'suhe']), got {self.definitions!r}.")
        self.definitions = check_options(self.definitions, self.update)
        if isinstance(self.classes, (int, np.integer, set, frozenset, dict)):
            raise ValueError(f"classes must be a list of class names or labels (with papermill: "
                             f"-y 'classes: [0, 2]'), got {self.classes!r}.")
        if self.classes is not None:
            self.classes = tuple(self.classes) if not isinstance(self.classes, str) else (self.classes,)
        for name in ("epochs", "runs", "measure_every", "k"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.batch_size is not None:
            if not _is_int(self.batch_size) or self.batch_size < 1:
                raise ValueError(
                    f"batch_size must be a positive integer or None, got {self.batch_size!r}."
                )
            self.batch_size = int(self.batch_size)
        for name in ("lr", "update_lr", "eps", "weight_decay"):
            # NOTE: YAML (papermill -y, -f) reads 1e-4 as the string '1e-4'; write 1.0e-4
            value = getattr(self, name)
            if (not isinstance(value, numbers.Real) or isinstance(value, bool)
                    or not math.isfinite(value)):
                hint = ""
                if isinstance(value, str):
                    hint = " (YAML reads 1e-4 as a string: write 1.0e-4)"
                raise ValueError(f"{name} must be a finite number, got {value!r}{hint}.")
            if name == "weight_decay" and value < 0:
                raise ValueError(f"weight_decay must be >= 0, got {value!r}.")
            if name != "weight_decay" and not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}.")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}.")
        for name in ("include_self", "download"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        if self.k < 2 and not self.include_self:
            raise ValueError("k=1 leaves no own-class pairs once self-pairs are left out (every "
                             "own-class S_rel would be NaN); use k >= 2 or include_self=True.")
        try:
            pick_device(self.device)  # fails here, before any data is loaded
        except RuntimeError:  # torch lists every device type it knows
            raise ValueError(f"Unknown device {self.device!r}; use 'auto', 'cpu', 'cuda' or "
                             f"'cuda:<index>'.") from None
        if self.measure_dtype not in ("float32", "float64"):
            raise ValueError(f"measure_dtype must be 'float32' or 'float64', got {self.measure_dtype!r}.")
        if self.dataset not in DATASETS:
            raise ValueError(f"Unknown dataset {self.dataset!r}; choose from {sorted(DATASETS)}.")
        if self.batch_size is None:
            self.batch_size = DATASETS[self.dataset].batch_size

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = None if self.classes is None else list(self.classes)
        d["definitions"] = list(self.definitions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ExperimentConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Unknown experiment parameter(s) {sorted(unknown)}; known: {sorted(known)}.")
        return cls(**d)


@dataclass
class ExperimentResult:
    """Everything a run of `run_experiment` produced; `srel.results.save_results` writes it."""

    config: dict
    class_names: list
    source: str
    measure_epochs: list  # epoch position of each measurement, e.g. 0.0, 9/59, ...
    seeds: list  # per run
    reference_indices: list  # per run: (C * k,) indices into the training split
    metrics: dict = field(default_factory=dict)  # train/test acc (%) and loss: runs x epochs
    pair_iters: dict = field(default_factory=dict)  # definition -> runs x pairs x measurements
    pair_values: dict = field(default_factory=dict)  # definition -> (runs, M, C, C, k, k)
    n_floored: dict = field(default_factory=dict)  # definition -> (runs, M, C, C)
    n_nonfinite: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)  # wall time: total, training, measurement


NOTEBOOK_OUTPUTS = ("assets_dir", "plots_dir", "checkpoint_dir")  # notebook-only parameters


def config_from_notebook(namespace: dict) -> ExperimentConfig:
    """The experiment config from a notebook's parameters (its `globals()`).

    papermill only warns about a `-p` name the parameters cell does not define, and the run
    would go on with the defaults; here any such name is an error. Notebook names equal the
    config's fields, except `definition` (-> `definitions`) and the output folders, which must
    not be existing files.
    """
    known = {f.name for f in fields(ExperimentConfig)} - {"definitions"}
    known |= {"definition", *NOTEBOOK_OUTPUTS}
    params = {
        name: value
        for name, value in namespace.items()
        if not name.startswith("_")
        and not name[0].isupper()  # IPython's In / Out
        and not callable(value)
        and not isinstance(value, types.ModuleType)
    }
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(
            f"Unknown notebook parameter(s) {unknown} (a misspelt papermill -p?); "
            f"known: {sorted(known)}."
        )
    for name in NOTEBOOK_OUTPUTS:
        folder = params.get(name)
        if folder is not None and resolve_path(folder).exists() and not resolve_path(folder).is_dir():
            raise NotADirectoryError(f"{name}={folder!r} is a file; pass a folder.")
    params["definitions"] = params.pop("definition", ("kl",))
    return ExperimentConfig(**{k: v for k, v in params.items() if k not in NOTEBOOK_OUTPUTS})


def load_subset(config: ExperimentConfig):
    """The config's classes and counts, loaded (raises before any training if anything is off)."""
    return load_class_subset(
        config.dataset,
        config.classes,
        config.train_per_class,
        config.test_per_class,
        data_root=config.data_root,
        download=config.download,
    )


def describe_subset(subset) -> str:
    def counts(labels):
        per_class = torch.bincount(labels, minlength=len(subset.class_names)).tolist()
        return f"{len(labels)} ({' / '.join(map(str, per_class))})"

    return (
        f"{subset.dataset}: {', '.join(subset.class_names)} | train {counts(subset.train_labels)}"
        f" | test {counts(subset.test_labels)} | from {subset.source}"
    )


# ----------------------------------------------------------------------------------------------
# seeds


def derive_seed(*keys: int) -> int:
    """A 31-bit seed from (seed, run, epoch, ...) that does not collide across nearby keys."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] >> 1)


# ----------------------------------------------------------------------------------------------
# one epoch


def evaluate(model, images, labels, batch_size, device) -> tuple:
    """(mean cross-entropy, accuracy in percent) on un-augmented images."""
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for x, y in make_loader(images, labels, max(batch_size, 256), train=False):
            logits = model(x.to(device))
            y = y.to(device)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(-1) == y).sum().item()
    return loss_sum / len(labels), 100.0 * correct / len(labels)


def _summary(history: dict, definition: str) -> str:
    means = history["class_means"][definition][-1]  # (C, C) of the last measurement
    own = np.nanmean(np.diag(means))
    cross = np.nanmean(means[~np.eye(len(means), dtype=bool)])
    return f"S_rel {definition} own {own:.3g} cross {cross:.3g}"


# ----------------------------------------------------------------------------------------------
# the experiment


def run_experiment(
    config: ExperimentConfig,
    subset=None,
    checkpoint_dir=None,
    verbose: bool = True,
) -> ExperimentResult:
    """Train `config.runs` models and track S_rel; resume from `checkpoint_dir` when it holds a
    checkpoint of the same parameters.

    Args:
        config: the experiment's parameters.
        subset: a loaded `ClassSubset`; None loads it from the config (raising before any
            training if the data is missing or the classes or counts are invalid).
        checkpoint_dir: folder for per-epoch checkpoints; None disables checkpointing.
        verbose: one line per epoch and a progress bar over batches.
    """
    if subset is None:
        subset = load_subset(config)
    n_classes = len(subset.class_names)
    device = pick_device(config.device)
    dtype = torch.float64 if config.measure_dtype == "float64" else None
    n_batches = -(-len(subset.train_labels) // config.batch_size)
    measure_batches = list(range(0, n_batches, config.measure_every))
    measure_epochs = [
        epoch + b / n_batches for epoch in range(config.epochs) for b in measure_batches
    ]
    # fail now rather than after training: k must fit in every class
    select_reference_points(subset.train_labels.numpy(), config.k, n_classes, seed=0)

    store = ckpt.CheckpointStore(checkpoint_dir, config.to_dict()) if checkpoint_dir else None
    state = store.load(verbose=verbose) if store else None
    if state is None:
        state = {"run": 0, "epoch": 0, "runs": [], "current": None}

    start = time.perf_counter()
    while state["run"] < config.runs:
        run = state["run"]
        seed = derive_seed(config.seed, run)
        torch.manual_seed(seed)
        model = make_resnet18(n_classes).to(device)
        optimizer = torch.optim.Adam(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        ref_idx = select_reference_points(subset.train_labels.numpy(), config.k, n_classes, seed)
        ref_x = normalize_images(subset.train_images[ref_idx]).to(device)
        ref_y = subset.train_labels[ref_idx].to(device)
        history = state["current"]
        if history is None:
            history = _new_history(config, seed, ref_idx)
        else:
            model.load_state_dict(history.pop("model"))
            optimizer.load_state_dict(history.pop("optimizer"))

        bar = tqdm(
            total=config.epochs * n_batches,
            initial=state["epoch"] * n_batches,
            desc=f"run {run + 1}/{config.runs}",
            disable=not verbose,
            mininterval=2.0,
            leave=False,
        )
        for epoch in range(state["epoch"], config.epochs):
            t_epoch = time.perf_counter()
            epoch_seed = derive_seed(config.seed, run, epoch + 1)
            torch.manual_seed(epoch_seed)  # augmentation draws from the global RNG
            loader = make_loader(
                subset.train_images,
                subset.train_labels,
                config.batch_size,
                train=True,
                generator=torch.Generator().manual_seed(epoch_seed),
            )
            loss_sum, correct, seen = 0.0, 0, 0
            for batch, (x, y) in enumerate(loader):
                # measure S_rel at the weights before this batch's step
                if batch % config.measure_every == 0:
                    t0 = time.perf_counter()
                    found = measure_s_rel(
                        model, ref_x, ref_y, n_classes, config.definitions, config.update,
                        config.update_lr, config.eps, dtype, config.include_self,
                    )
                    history["measure_seconds"] += time.perf_counter() - t0
                    _record(history, found)

                # forward / backward / step
                model.train()
                x, y = x.to(device), y.to(device)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(y)
                correct += (logits.argmax(-1) == y).sum().item()
                seen += len(y)
                bar.update()

            # evaluate and log
            test_loss, test_acc = evaluate(
                model, subset.test_images, subset.test_labels, config.batch_size, device
            )
            metrics = history["metrics"]
            metrics["train_losses"].append(loss_sum / seen)
            metrics["train_accs"].append(100.0 * correct / seen)
            metrics["test_losses"].append(test_loss)
            metrics["test_accs"].append(test_acc)
            if verbose:
                bar.write(
                    f"run {run + 1}/{config.runs} epoch {epoch + 1}/{config.epochs} | "
                    f"train loss {loss_sum / seen:.3f} acc {100.0 * correct / seen:5.1f}% | "
                    f"test loss {test_loss:.3f} acc {test_acc:5.1f}% | "
                    + " | ".join(_summary(history, d) for d in config.definitions)
                    + f" | {time.perf_counter() - t_epoch:.1f}s"
                )

            # checkpoint: the next epoch (or run) starts from here
            if epoch + 1 < config.epochs:
                state.update(epoch=epoch + 1, current=history)
            else:
                state.update(run=run + 1, epoch=0, current=None)
                state["runs"].append(history)
            if store:
                extra = {} if state["current"] is None else {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                }
                store.save(state, extra)
        bar.close()

    result = _assemble(config, subset, state["runs"], measure_epochs, n_classes)
    result.seconds["total_this_process"] = time.perf_counter() - start
    return result


def _new_history(config, seed, ref_idx) -> dict:
    return {
        "seed": int(seed),
        "reference_indices": np.asarray(ref_idx),
        "metrics": {k: [] for k in METRIC_KEYS},
        "class_means": {d: [] for d in config.definitions},
        "pair_values": {d: [] for d in config.definitions},
        "n_floored": {d: [] for d in config.definitions},
        "n_nonfinite": {d: [] for d in config.definitions},
        "measure_seconds": 0.0,
    }


def _record(history: dict, found: dict) -> None:
    for d, m in found.items():
        history["class_means"][d].append(m.class_means)
        history["pair_values"][d].append(m.pair_values.astype(np.float32))
        history["n_floored"][d].append(m.n_floored)
        history["n_nonfinite"][d].append(m.n_nonfinite)


def _assemble(config, subset, runs, measure_epochs, n_classes) -> ExperimentResult:
    result = ExperimentResult(
        config=config.to_dict(),
        class_names=list(subset.class_names),
        source=subset.source,
        measure_epochs=list(measure_epochs),
        seeds=[h["seed"] for h in runs],
        reference_indices=[h["reference_indices"] for h in runs],
    )
    for key in METRIC_KEYS:
        result.metrics[key] = [list(h["metrics"][key]) for h in runs]
    for d in config.definitions:
        result.pair_iters[d] = [
            [[float(means[den, num]) for means in h["class_means"][d]] for num, den in pair_order(n_classes)]
            for h in runs
        ]
        result.pair_values[d] = np.stack([np.stack(h["pair_values"][d]) for h in runs])
        result.n_floored[d] = np.stack([np.stack(h["n_floored"][d]) for h in runs])
        result.n_nonfinite[d] = np.stack([np.stack(h["n_nonfinite"][d]) for h in runs])
    result.seconds["measurement"] = float(sum(h["measure_seconds"] for h in runs))
    return result
