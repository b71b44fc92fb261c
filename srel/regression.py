"""Neural regression: the original S_rel during full-batch gradient descent, and its two phases.

References:
  He & Su, "The Local Elasticity of Neural Networks", ICLR 2020 (the original S_rel).
  Dan, Mukherjee, Das, Gampa, "Dynamics of Local Elasticity During Training of Neural Nets",
  arXiv 2111.01166 (an elastic phase where S_rel changes fast, then an inelastic one).

For a scalar predictor f(x; w) and the per-example loss l_x(w) = 1/2 (f(x; w) - y)^2,

    S_rel(x, x') = |f(x'; w+) - f(x'; w)| / |f(x; w+) - f(x; w)|,   w+ = w - eta grad l_x(w).

To first order in eta both changes are -eta (f(x) - y) <grad f(., w), grad f(x, w)>, so the
residual cancels and S_rel(x, x') = |K(x, x')| / K(x, x) with K the tangent kernel. We measure
this kernel form for every ordered pair of a probe set from per-sample gradients
(`torch.func.vmap` over `torch.func.grad`); `compute_s_rel_explicit` takes the actual step and
is the reference the kernel form is tested against.
"""
import time
from contextlib import contextmanager

import numpy as np
import seaborn as sns
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn
from torch.func import functional_call, grad, vmap

S_REL_LABEL = r"$S_{\mathrm{rel}}$"


def _new_figure(**kwargs) -> Figure:
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)  # drawn without pyplot: nothing accumulates in pyplot's registry
    return fig


@contextmanager
def _torch_threads(n_threads):
    """Run a block with n_threads intra-op threads (None: leave as is), restoring the setting."""
    before = torch.get_num_threads()
    if n_threads is not None:
        torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------
# data and models


def make_teacher_regression(n_samples, dim, teacher_width=1, seed=0):
    """Inputs x ~ N(0, I_dim) and targets of a fixed random teacher a . ReLU(B x), standardized.

    B (teacher_width, dim) and a (teacher_width,) are standard normal. A narrow teacher makes the
    target depend on few directions of input space, which the student has to find: its tangent
    kernel then moves away from its initial value (a linear student's kernel never moves).

    Returns:
        inputs (n_samples, dim) and targets (n_samples,), float32 tensors.
    """
    if n_samples < 2 or dim < 1 or teacher_width < 1:
        raise ValueError("Need n_samples >= 2, dim >= 1 and teacher_width >= 1.")
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n_samples, dim, generator=gen)
    B = torch.randn(teacher_width, dim, generator=gen)
    a = torch.randn(teacher_width, generator=gen)
    targets = torch.relu(inputs @ B.T) @ a  # (n_samples,)
    return inputs, (targets - targets.mean()) / targets.std().clamp_min(1e-12)


def make_mlp(dim, width=64, depth=2, init_scale=1.0, seed=0) -> nn.Sequential:
    """ReLU net dim -> width (x depth) -> 1 with PyTorch's default init times init_scale."""
    if dim < 1 or width < 1 or depth < 1 or init_scale <= 0:
        raise ValueError("Need dim, width, depth >= 1 and init_scale > 0.")
    torch.manual_seed(seed)
    layers, fan_in = [], dim
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    model = nn.Sequential(*layers, nn.Linear(fan_in, 1))
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(init_scale)
    return model


def make_linear_model(dim, seed=0) -> nn.Linear:
    """f(x) = w . x + b with PyTorch's default init: the kernel-constant reference."""
    torch.manual_seed(seed)
    return nn.Linear(dim, 1)


def _scalar_fn(model):
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p, x):
        return functional_call(model, p, (x[None],)).reshape(())

    return f, params


def _check_scalar(model, inputs):
    with torch.no_grad():
        out = model(inputs[:1])
    if out.numel() != 1:
        raise ValueError(
            f"S_rel here needs a scalar-output model; got output shape {tuple(out.shape)}."
        )


# ----------------------------------------------------------------------------------------------
# S_rel: kernel form and explicit step


def compute_per_sample_grads(model, inputs) -> torch.Tensor:
    """Gradients of the scalar output w.r.t. all parameters, one row per input: (n, n_params)."""
    _check_scalar(model, inputs)
    f, params = _scalar_fn(model)
    grads = vmap(grad(f), in_dims=(None, 0))(params, inputs)
    return torch.cat([g.reshape(inputs.shape[0], -1) for g in grads.values()], dim=1)


def compute_s_rel(model, inputs) -> torch.Tensor:
    """Kernel form of the original S_rel for all ordered pairs of `inputs`.

    Returns:
        (n, n) with entry [i, j] = |K(x_i, x_j)| / K(x_i, x_i): x = x_i is the updated example,
        x' = x_j the observed one. Rows with K(x_i, x_i) = 0 (no gradient at x_i) are NaN.
    """
    G = compute_per_sample_grads(model, inputs)  # (n, n_params)
    K = G @ G.T  # (n, n)
    diag = K.diagonal()
    return K.abs() / torch.where(diag > 0, diag, torch.nan)[:, None]


def compute_s_rel_explicit(model, inputs, targets, lr) -> torch.Tensor:
    """S_rel from an explicit SGD step of size lr on each example's squared loss.

    Row i: w+ = w - lr grad 1/2 (f(x_i) - y_i)^2; entry [i, j] = |f(x_j; w+) - f(x_j; w)| /
    |f(x_i; w+) - f(x_i; w)|. One gradient and one batched forward per row; use float64 and a
    small lr to compare with `compute_s_rel`. (n, n)
    """
    _check_scalar(model, inputs)
    f, params = _scalar_fn(model)

    def loss(p, x, y):
        return 0.5 * (f(p, x) - y) ** 2

    batched = vmap(f, in_dims=(None, 0))
    with torch.no_grad():
        before = batched(params, inputs)  # (n,)
    rows = []
    for i in range(inputs.shape[0]):
        g = grad(loss)(params, inputs[i], targets[i])
        stepped = {k: params[k] - lr * g[k] for k in params}
        with torch.no_grad():
            change = (batched(stepped, inputs) - before).abs()  # (n,)
        rows.append(change / change[i])
    return torch.stack(rows)


def off_diagonal(matrix) -> torch.Tensor:
    """The n (n - 1) entries of an (n, n) matrix with i != j, flattened."""
    n = matrix.shape[0]
    return matrix[~torch.eye(n, dtype=torch.bool, device=matrix.device)]


# ----------------------------------------------------------------------------------------------
# training with S_rel tracking, and the phase switch


def eval_schedule(n_steps, eval_every) -> np.ndarray:
    """Steps at which S_rel is measured: every eval_every steps, plus a few early steps. (M,)"""
    if n_steps < 1 or eval_every < 1:
        raise ValueError("n_steps and eval_every must be >= 1.")
    early = np.unique(np.geomspace(1, min(eval_every, n_steps), 6).astype(int))
    return np.unique(np.r_[0, early, np.arange(0, n_steps + 1, eval_every), n_steps])


def train_tracking_s_rel(model, inputs, targets, probe, lr, n_steps, eval_every=10, verbose=False,
                         n_threads=1):
    """Full-batch gradient descent on 1/(2n) sum (f(x_i) - y_i)^2, measuring S_rel on `probe`.

    Args:
        model: scalar-output module (trained in place). inputs (n, dim), targets (n,).
        probe: (m, dim) points whose m (m - 1) ordered pairs are measured.
        n_threads: torch intra-op threads while training (restored afterwards; None: as is).
    Returns:
        dict of numpy arrays over the M measurement steps: "steps", "loss" (full-batch training
        loss before that step), "median", "q25", "q75", "mean" of S_rel over the pairs.
    """
    if inputs.shape[0] != targets.shape[0] or probe.shape[0] < 2 or lr <= 0:
        raise ValueError("inputs and targets must have the same length, probe >= 2 points, lr > 0.")
    schedule = set(eval_schedule(n_steps, eval_every).tolist())
    history = {k: [] for k in ("steps", "loss", "median", "q25", "q75", "mean")}
    # NOTE: one thread by default - on tensors this small, two threads made training 6x and the
    # per-sample gradients 40x slower on a 2-core machine.
    with _torch_threads(n_threads):
        _train_loop(model, inputs, targets, probe, lr, n_steps, schedule, history, eval_every,
                    verbose)
    return {k: np.asarray(v) for k, v in history.items()}


def _train_loop(model, inputs, targets, probe, lr, n_steps, schedule, history, eval_every, verbose):
    start = time.time()
    for step in range(n_steps + 1):
        loss = 0.5 * ((model(inputs).squeeze(-1) - targets) ** 2).mean()
        # measure, then step
        if step in schedule:
            pairs = off_diagonal(compute_s_rel(model, probe))
            pairs = pairs[~torch.isnan(pairs)]
            q25, med, q75 = torch.quantile(pairs, torch.tensor([0.25, 0.5, 0.75])).tolist()
            for key, value in zip(history, (step, loss.item(), med, q25, q75, pairs.mean().item())):
                history[key].append(value)
            if verbose and (step % (10 * eval_every) == 0 or step == n_steps):
                print(f"step {step:6d}  loss {loss.item():.4e}  median S_rel {med:.4f}  "
                      f"{time.time() - start:.1f}s")
        if step == n_steps:
            break
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for param in model.parameters():
                param -= lr * param.grad


def detect_phase_switch(steps, values, threshold=1e-4, window=5) -> dict:
    """First step after which S_rel's relative rate of change stays below threshold.

    Rate between consecutive measurements k, k+1:  |v_{k+1} - v_k| / (|v_k| (s_{k+1} - s_k)),
    i.e. the relative change per training step. The switch is the first step s_k from which
    `window` consecutive rates are all below `threshold` (default 1e-4: less than 1% per 100 steps).

    Returns:
        dict with "index" and "step" of the switch (None if there is none) and "rates" (M - 1,).
    """
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if steps.shape != values.shape or steps.ndim != 1 or np.any(np.diff(steps) <= 0):
        raise ValueError("steps and values must be 1-D of the same length, steps increasing.")
    if threshold <= 0 or window < 1:
        raise ValueError("threshold must be > 0 and window >= 1.")
    with np.errstate(divide="ignore", invalid="ignore"):
        rates = np.abs(np.diff(values)) / (np.abs(values[:-1]) * np.diff(steps))
    calm = np.nan_to_num(rates, nan=np.inf) < threshold
    for k in range(calm.size - window + 1):
        if calm[k:k + window].all():
            return {"index": k, "step": int(steps[k]), "rates": rates}
    return {"index": None, "step": None, "rates": rates}


def run_regression_phases(
    dim=5,
    n_train=256,
    n_probe=48,
    teacher_width=1,
    width=64,
    depth=2,
    init_scale=0.5,
    lr=0.05,
    n_steps=3000,
    eval_every=10,
    threshold=1e-4,
    window=5,
    seeds=(0, 1, 2),
    verbose=False,
) -> dict:
    """Per seed: train an MLP and a linear model on teacher data, tracking S_rel; find the switch.

    Each seed draws its own data, teacher and initialization; the probe set is the first n_probe
    training points.

    Returns:
        dict with "params" and "runs", a list over seeds of {"seed", "mlp", "linear"
        (histories from `train_tracking_s_rel`), "switch"}, where "switch" = {"step", "index",
        "loss", "median_at_switch", "median_start", "median_end", "rates"} for the MLP's median
        S_rel (step, index and loss are None when no switch is found).
    """
    if not 2 <= n_probe <= n_train:
        raise ValueError(f"Need 2 <= n_probe <= n_train; got n_probe={n_probe}, n_train={n_train}.")
    if len(seeds) < 1:
        raise ValueError("seeds must name at least one seed.")
    params = dict(
        dim=dim, n_train=n_train, n_probe=n_probe, teacher_width=teacher_width, width=width,
        depth=depth, init_scale=init_scale, lr=lr, n_steps=n_steps, eval_every=eval_every,
        threshold=threshold, window=window, seeds=tuple(seeds),
    )
    detect_phase_switch([0, 1], [1.0, 1.0], threshold, window)  # bad settings fail before training
    runs = []
    for seed in seeds:
        inputs, targets = make_teacher_regression(n_train, dim, teacher_width, seed)
        probe = inputs[:n_probe]
        run = {"seed": seed}
        for name, model in (("mlp", make_mlp(dim, width, depth, init_scale, seed)),
                            ("linear", make_linear_model(dim, seed))):
            if verbose:
                print(f"-- seed {seed}, {name}")
            run[name] = train_tracking_s_rel(
                model, inputs, targets, probe, lr, n_steps, eval_every, verbose
            )
        mlp = run["mlp"]
        switch = detect_phase_switch(mlp["steps"], mlp["median"], threshold, window)
        k = switch["index"]
        run["switch"] = {
            "step": switch["step"],
            "index": k,
            "loss": None if k is None else float(mlp["loss"][k]),
            "median_at_switch": None if k is None else float(mlp["median"][k]),
            "median_start": float(mlp["median"][0]),
            "median_end": float(mlp["median"][-1]),
            "rates": switch["rates"],
        }
        runs.append(run)
    return {"params": params, "runs": runs}


def summarize_regression_phases(result) -> dict:
    """Switch step and loss, start/end median S_rel of both models: (mean, std) over seeds."""
    runs = result["runs"]
    found = [r["switch"] for r in runs if r["switch"]["step"] is not None]
    summary = {"n_seeds": len(runs), "n_switches_found": len(found)}
    for key, values in (
        ("switch_step", [s["step"] for s in found]),
        ("switch_loss", [s["loss"] for s in found]),
        ("mlp_median_start", [r["mlp"]["median"][0] for r in runs]),
        ("mlp_median_min", [r["mlp"]["median"].min() for r in runs]),
        ("mlp_median_end", [r["mlp"]["median"][-1] for r in runs]),
        ("mlp_loss_end", [r["mlp"]["loss"][-1] for r in runs]),
        ("linear_median_start", [r["linear"]["median"][0] for r in runs]),
        ("linear_median_end", [r["linear"]["median"][-1] for r in runs]),
        ("linear_loss_end", [r["linear"]["loss"][-1] for r in runs]),
    ):
        values = np.asarray(values, dtype=float)
        summary[key] = (float(values.mean()), float(values.std())) if values.size else None
    return summary


def plot_regression_phases(result) -> Figure:
    """Training loss and median S_rel per seed for the MLP and the linear model.

    The interquartile band over pairs is drawn for the first seed; dotted lines mark switches.
    """
    params, runs = result["params"], result["runs"]
    fig = _new_figure(figsize=(13, 4.5), layout="constrained")
    ax_loss, ax_s = fig.subplots(1, 2, sharex=True)
    colors = dict(zip(("mlp", "linear"), sns.color_palette("deep", 2)))
    labels = {"mlp": f"ReLU MLP ({params['depth']} x {params['width']})", "linear": "linear model"}
    for n, run in enumerate(runs):
        for name in ("mlp", "linear"):
            hist = run[name]
            steps = hist["steps"] + 1  # log axis: step 0 is drawn at 1
            label = labels[name] if n == 0 else None
            ax_loss.plot(steps, hist["loss"], color=colors[name], label=label, lw=1.4)
            ax_s.plot(steps, hist["median"], color=colors[name], lw=1.4,
                      label=None if label is None else f"{label}: median over pairs")
            if n == 0:
                ax_s.fill_between(steps, hist["q25"], hist["q75"], color=colors[name],
                                  alpha=0.15, lw=0, label=f"{labels[name]}: quartiles (seed 0)")
        step = run["switch"]["step"]
        if step is not None:
            for ax in (ax_loss, ax_s):
                ax.axvline(step + 1, color="0.3", ls=":", lw=1,
                           label="detected switch" if n == 0 else None)
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("training loss 1/(2n) sum (f - y)^2")
    ax_s.set_ylabel(S_REL_LABEL + f" over {params['n_probe']}x{params['n_probe'] - 1} probe pairs")
    for ax in (ax_loss, ax_s):
        ax.set_xscale("log")
        ax.set_xlabel("gradient descent step + 1")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax_loss.set_title(f"teacher width {params['teacher_width']}, dim {params['dim']}, "
                      f"lr {params['lr']}, init scale {params['init_scale']}")
    ax_s.set_title(f"{len(runs)} seeds; switch: rate < {params['threshold']:g}/step "
                   f"for {params['window']} measurements")
    return fig
