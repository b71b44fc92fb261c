"""Batched measurement of local elasticity S_rel for classifiers.

References:
  He & Su, "The Local Elasticity of Neural Networks", ICLR 2020 (the original form, SGD update).
  Dan, Mukherjee, Das, Gampa, "Dynamics of Local Elasticity During Training of Neural Nets",
  arXiv 2111.01166 (the KL form, Adam update).

For weights w and a reference point x with label y, let w+(x) be one update of w on the
cross-entropy at (x, y) alone. For another reference point x',

    S_rel(x, x') = change(x'; w -> w+(x)) / change(x; w -> w+(x))

where `change` compares the softmax outputs before and after the update:
  "kl"           KL(p(x'; w) || p(x'; w+)), computed from logit differences (exactly 0 when
                 the logits do not move);
  "suhe"         || p(x'; w+) - p(x'; w) ||_2, the same Euclidean norm in numerator and denominator;
  "kl_published" torch.nn.functional.kl_div(p(x'; w+), p(x'; w), reduction="mean") with
                 probabilities where kl_div expects log-probabilities, i.e. the mean over classes of
                 p (log p - q). This is NOT a divergence (it is about -0.447 for two identical
                 outputs [0.7, 0.2, 0.1]); it exists only to reproduce published curves.
Update rules: "adam" is the first step of a fresh Adam optimizer without weight decay, which
simplifies exactly to w - lr * g / (|g| + adam_eps); "sgd" is w - lr * g.

Cost: per sampled point x, one batched forward over the whole reference set, x's gradient and an
elementwise update. For models built of Conv2d and Linear layers, the per-example gradients come
from one batched backward over the sampled points; other models take a batch-1 backward per x.
Weights are never copied into a new model: the updated weights live in one flat buffer that
`torch.func.functional_call` reads through views. The loop over sampled points is split by
`rows` so processes (e.g. torch.distributed ranks) can each take a slice and the rows be gathered
before `summarize_s_rel`.

The measurement runs the module in eval mode (no dropout) and refuses a module whose BatchNorm
is in training mode, since batch statistics make a one-example update ill-defined.
"""
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

DEFINITIONS = ("kl", "suhe", "kl_published")
UPDATE_RULES = ("adam", "sgd")


def pair_order(n_classes: int) -> list:
    """Ordered class pairs (num, den) of the result pickles: per den class d, (d, d) first, then
    (c, d) for the other classes c ascending. For 3 classes:
    (0,0),(1,0),(2,0),(1,1),(0,1),(2,1),(2,2),(0,2),(1,2)."""
    pairs = []
    for den in range(n_classes):
        pairs.append((den, den))
        pairs.extend((num, den) for num in range(n_classes) if num != den)
    return pairs


def check_options(definitions, update: str) -> tuple:
    definitions = (definitions,) if isinstance(definitions, str) else tuple(definitions)
    bad = [d for d in definitions if d not in DEFINITIONS]
    if bad or not definitions:
        raise ValueError(f"Unknown S_rel definition(s) {bad or definitions}; choose from {DEFINITIONS}.")
    if update not in UPDATE_RULES:
        raise ValueError(f"Unknown update rule {update!r}; choose from {UPDATE_RULES}.")
    return definitions


def check_measurable(model: nn.Module) -> None:
    """Raise if a BatchNorm layer is in training mode (its output would depend on the batch), or
    if one module object is registered twice (torch.func.functional_call then leaves plain
    tensors in place of that module's parameters: seen with torch 2.14)."""
    seen = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if id(module) in seen and next(module.parameters(recurse=False), None) is not None:
            raise ValueError(
                f"Module {seen[id(module)]!r} is registered again as {name!r}: S_rel measurement "
                "does not support a module object used at two places. Build the model with "
                "distinct modules (tied Parameters in distinct modules are fine)."
            )
        seen.setdefault(id(module), name)
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise ValueError(
                f"Module {name or type(model).__name__!r} is a BatchNorm layer in training mode: "
                "a one-example update and per-example outputs are ill-defined with batch "
                "statistics. Call model.eval() first, or use a model without BatchNorm "
                "(make_resnet18 has none)."
            )


# ----------------------------------------------------------------------------------------------
# output change between two sets of logits


def _exp_minus_linear(u: torch.Tensor) -> torch.Tensor:
    """exp(u) - 1 - u without cancellation: a Taylor series near 0, expm1(u) - u elsewhere."""
    series = torch.zeros_like(u)
    for k in range(9, 2, -1):  # u^2 (1/2! + u (1/3! + ... + u / 9!)): relative error < 1e-13 below 0.1
        series = (series + 1 / math.factorial(k)) * u
    series = (series + 0.5) * u * u
    return torch.where(u.abs() < 0.1, series, torch.expm1(u) - u)


def output_change(logits_before: torch.Tensor, logits_after: torch.Tensor, definition: str):
    """Change of the softmax output per row, (n, C) x (n, C) -> (n,).

    Both divergences are written in terms of the logit change delta = z_after - z_before so that
    small changes are not lost to cancellation in float32. With p = softmax(z_before) and
    u = delta - E_p[delta] (so E_p[u] = 0):
      KL(p || q) = log E_p[exp(u)] = log1p(E_p[exp(u) - 1 - u])
      q - p = p * expm1(u - KL(p || q))
    """
    if definition == "kl_published":
        p, q = logits_before.softmax(-1), logits_after.softmax(-1)
        return F.kl_div(q, p, reduction="none").mean(-1)
    if definition not in DEFINITIONS:
        raise ValueError(f"Unknown S_rel definition {definition!r}; choose from {DEFINITIONS}.")
    log_p = logits_before.log_softmax(-1)
    p = log_p.exp()
    delta = logits_after - logits_before
    u = delta - (p * delta).sum(-1, keepdim=True)
    small = torch.log1p((p * _exp_minus_linear(u)).sum(-1))
    # exp overflows for changes of tens of nats; there cancellation is harmless anyway
    large = torch.logsumexp(log_p + u, dim=-1).clamp_min(0)
    kl = torch.where(u.amax(-1) < 20, small, large)
    if definition == "kl":
        return kl
    return torch.linalg.vector_norm(p * torch.expm1(u - kl[:, None]), dim=-1)


# ----------------------------------------------------------------------------------------------
# per-example gradients

# NOTE: rows whose gradients come from one batched forward/backward - bounds the memory that
# holds every layer's (unfolded) input and output gradient: 1.3 MiB per row for ResNet-18 on 32x32.
_GRAD_BLOCK = 64


def _gradient_layers(model: nn.Module, names) -> dict:
    """{layer: (index of its weight in `names`, index of its bias or None)} when every parameter
    is the weight or bias of a plain nn.Linear or a zero-padded, ungrouped nn.Conv2d; {} when
    any is not (shared, or of another kind of layer)."""
    index = {name: k for k, name in enumerate(names)}
    layers = {}
    for prefix, module in model.named_modules():
        if type(module) not in (nn.Linear, nn.Conv2d):
            continue
        if type(module) is nn.Conv2d and (
            module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str)
        ):
            return {}
        weight = index.get(f"{prefix}.weight" if prefix else "weight")
        bias = index.get(f"{prefix}.bias" if prefix else "bias")
        if weight is None or (module.bias is not None and bias is None):
            return {}
        layers[module] = (weight, bias)
    covered = sum(1 + (bias is not None) for _, bias in layers.values())
    return layers if covered == len(names) else {}


def _capture_layers(model, call_params, x, y, layers: dict):
    """Inputs and output gradients of every layer in one forward/backward of the summed loss.

    Returns {layer: (a, g)}: for a Conv2d a = unfolded input (B, C_in * kh * kw, P) and
    g = output gradient (B, C_out, P); for a Linear a = input (B, ..., in), g = (B, ..., out).
    Row b of g is the gradient of example b's own loss, since examples do not interact. None
    when a layer is not called exactly once on a batch-first input left unmodified.
    """
    inputs, grads, versions = {}, {}, {}

    def keep(module, args, output):
        if module in inputs or not args or args[0].shape[0] != len(x):
            inputs[module] = None  # called twice, or not batch first
            return
        inputs[module] = args[0].detach()
        versions[module] = args[0]._version
        # NOTE: registered before any in-place op (ResNet's ReLU), the hook sees the gradient
        # of the layer's own output
        output.register_hook(lambda g: grads.__setitem__(module, g.detach()))

    handles = [layer.register_forward_hook(keep) for layer in layers]
    try:
        x = x.detach().requires_grad_(True)  # a target for backward that skips weight gradients
        with torch.enable_grad():
            logits = functional_call(model, call_params, (x,))
            torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x)
    finally:
        for handle in handles:
            handle.remove()
    if any(
        inputs.get(m) is None or m not in grads or inputs[m]._version != versions[m]
        for m in layers
    ):
        return None
    captured = {}
    for module, a in inputs.items():
        g = grads[module]
        if type(module) is nn.Conv2d:
            a = F.unfold(a, module.kernel_size, module.dilation, module.padding, module.stride)
            g = g.flatten(2)
        captured[module] = (a, g)
    return captured


def _write_example_grad(captured: dict, layers: dict, b: int, grad_views: list) -> None:
    """Gradient of example b's loss into grad_views (one view per parameter), layer by layer:
    dW = g_b a_b^T summed over positions, db = g_b summed over positions."""
    for module, (a, g) in captured.items():
        weight, bias = layers[module]
        if type(module) is nn.Conv2d:
            a_b, g_b = a[b], g[b]  # (C_in * kh * kw, P), (C_out, P)
            torch.mm(g_b, a_b.T, out=grad_views[weight].view(len(g_b), -1))
            if bias is not None:
                torch.sum(g_b, dim=1, out=grad_views[bias])
        else:
            a_b = a[b].reshape(-1, a.shape[-1])  # (positions, in)
            g_b = g[b].reshape(-1, g.shape[-1])  # (positions, out)
            torch.mm(g_b.T, a_b, out=grad_views[weight])
            if bias is not None:
                torch.sum(g_b, dim=0, out=grad_views[bias])


# ----------------------------------------------------------------------------------------------
# the measurement loop

# NOTE: elements per chunk of the eager update - three float32 chunks of 1 MiB (gradient, its
# |g| + eps, weights) stay in a core's 2 MiB L2 cache, so |g| + eps never reaches main memory, and
# chunks stay few enough that the per-op overhead (~7 us) does not dominate.
_UPDATE_CHUNK = 1 << 18
# NOTE: on CPU, Adam updates of tensors this large run as one torch.compile'd pass over the
# gradient, weights and result: ~3 ms for ResNet-18's 11.2M weights against ~8 ms eager, so a
# measurement takes 2.0 s instead of 2.2 s on 2 cores. Compiling costs ~12 s once per machine
# (then cached on disk) and ~1.6 s once per process: repaid after ~10 measurements, and a training
# run makes 49 per run.
# Results are bitwise those of the eager path; one graph per dtype serves every size, lr and eps.
_COMPILE_NUMEL = 1 << 20
_compiled_step = {}  # "fn": the compiled _adam_step, or None once compiling has failed


def _adam_step(out, w0, grad, lr: float, adam_eps: float) -> None:
    out.copy_(w0 - lr * grad / (grad.abs() + adam_eps))


def _compiled_adam_step(out, w0, grad, lr: float, adam_eps: float) -> bool:
    """The fused update; False (and a warning, once) where torch.compile does not work here."""
    if "fn" not in _compiled_step:
        _compiled_step["fn"] = torch.compile(_adam_step, dynamic=True, fullgraph=True)
    if _compiled_step["fn"] is None:
        return False
    try:
        _compiled_step["fn"](out.view(-1), w0.view(-1), grad.reshape(-1), lr, adam_eps)
        return True
    except Exception as error:  # e.g. no C++ compiler: any failure leaves the eager path
        _compiled_step["fn"] = None
        warnings.warn(
            f"torch.compile failed ({type(error).__name__}); S_rel measurements use the eager "
            "update, about 10% slower on CPU."
        )
        return False


def _views(flat: torch.Tensor, names, shapes, numels) -> dict:
    return {n: v.view(s) for n, v, s in zip(names, torch.split(flat, numels), shapes)}


def _chunks(tensor: torch.Tensor) -> tuple:
    return tensor.reshape(-1).split(_UPDATE_CHUNK)


def _write_updates(work: list, w0: list, grads: list, update: str, lr, adam_eps, scratch) -> None:
    """work = w0 - lr * grad / (|grad| + adam_eps) ("adam") or w0 - lr * grad ("sgd"), tensor
    by tensor."""
    for out_tensor, w0_tensor, grad_tensor in zip(work, w0, grads):
        if (
            update == "adam"
            and out_tensor.device.type == "cpu"
            and out_tensor.numel() >= _COMPILE_NUMEL
            and _compiled_adam_step(out_tensor, w0_tensor, grad_tensor, lr, adam_eps)
        ):
            continue
        for out, w, g in zip(_chunks(out_tensor), _chunks(w0_tensor), _chunks(grad_tensor)):
            if update == "adam":
                denom = scratch[: len(g)]
                torch.abs(g, out=denom).add_(adam_eps)
                torch.addcdiv(w, g, denom, value=-lr, out=out)
            else:
                torch.add(w, g, alpha=-lr, out=out)


def compute_output_changes(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    rows=None,
    definitions=("kl",),
    update: str = "adam",
    lr: float = 1e-4,
    adam_eps: float = 1e-8,
    dtype=None,
) -> dict:
    """Output changes at every reference point after one update on each sampled point.

    Args:
        model: any module without BatchNorm in training mode; its weights are not modified.
        inputs: (n, ...) reference points, already normalised (no augmentation).
        targets: (n,) integer labels.
        rows: indices of the sampled points x to update on (default: all n). Split these across
            processes to distribute the measurement.
        definitions: forms of the output change to return (see module docstring).
        update: "adam" (first step of a fresh Adam, no weight decay) or "sgd".
        lr: step size of the one update.
        dtype: compute dtype (e.g. torch.float64 for a reference); default the model's.

    Returns:
        {definition: (len(rows), n) float tensor on CPU}: entry [r, j] is the change at
        inputs[j] after the update on inputs[rows[r]]; entry [r, rows[r]] is the denominator.
    """
    definitions = check_options(definitions, update)
    check_measurable(model)
    n = len(inputs)
    rows = list(range(n)) if rows is None else [int(r) for r in rows]
    if any(r < 0 or r >= n for r in rows):
        raise ValueError(f"rows must index the {n} reference points, got {rows}.")

    names, params = zip(*[(name, p) for name, p in model.named_parameters()])
    dtype = dtype or params[0].dtype
    device = params[0].device
    shapes = [p.shape for p in params]
    numels = [p.numel() for p in params]
    buffers = {
        name: b.to(dtype) if b.is_floating_point() else b for name, b in model.named_buffers()
    }
    # three flat buffers: weights w, gradient, updated weights w+(x) (rewritten for each x)
    w0 = torch.cat([p.detach().reshape(-1) for p in params]).to(dtype)  # (n_params,)
    grad = torch.empty_like(w0)
    work = torch.empty_like(w0)
    w0_params = _views(w0, names, shapes, numels)
    grad_views = list(_views(grad, names, shapes, numels).values())
    work_call = {**_views(work, names, shapes, numels), **buffers}
    # leaves sharing w0's memory, for the backward passes
    leaves = [w0_params[name].detach().requires_grad_(True) for name in names]
    leaf_call = {**dict(zip(names, leaves)), **buffers}
    w0_list = [w0_params[name] for name in names]
    work_list = [work_call[name] for name in names]
    scratch = torch.empty(_UPDATE_CHUNK, dtype=dtype, device=device)
    x = inputs.to(device=device, dtype=dtype)
    y = targets.to(device=device, dtype=torch.long)
    layers = _gradient_layers(model, names)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits0 = functional_call(model, {**w0_params, **buffers}, (x,))  # (n, C)
        logits1 = logits0.new_empty(len(rows), *logits0.shape)  # (len(rows), n, C)
        for start in range(0, len(rows), _GRAD_BLOCK):
            block = rows[start : start + _GRAD_BLOCK]
            # per-example gradients: for Conv2d and Linear weights, products of each layer's
            # input and output gradient (Goodfellow, arXiv 1510.01799) from one batched
            # backward, ~4x faster on CPU than the batch-1 backward other models fall back to
            captured = None
            if layers:
                captured = _capture_layers(model, leaf_call, x[block], y[block], layers)
                layers = layers if captured is not None else {}

            for b, i in enumerate(block):
                if captured is not None:
                    _write_example_grad(captured, layers, b, grad_views)
                    step = ([work], [w0], [grad])  # flat buffers
                else:
                    logits = functional_call(model, leaf_call, (x[i : i + 1],))
                    loss = F.cross_entropy(logits, y[i : i + 1])
                    grads = torch.autograd.grad(loss, leaves, materialize_grads=True)
                    step = (work_list, w0_list, grads)  # per parameter

                # one update and the outputs it leads to
                with torch.no_grad():
                    _write_updates(*step, update, lr, adam_eps, scratch)
                    logits1[start + b] = functional_call(model, work_call, (x,))
    finally:
        model.train(was_training)

    before = logits0.expand_as(logits1).reshape(-1, logits0.shape[-1])  # (len(rows) * n, C)
    after = logits1.reshape(-1, logits0.shape[-1])
    return {d: output_change(before, after, d).view(len(rows), n).cpu() for d in definitions}


# ----------------------------------------------------------------------------------------------
# from output changes to S_rel per class pair


@dataclass
class SRelMeasurement:
    """S_rel of one measurement, one definition.

    pair_values[d, c, a, b] is S_rel(x = a-th point of class d, x' = b-th point of class c): den
    class d is the class of the updated point, num class c where the change is measured. NaN
    marks excluded pairs: self-pairs (exactly 1 by definition, unless include_self), pairs whose
    denominator fell below the floor, and non-finite ratios, each counted.
    """

    definition: str
    pair_values: np.ndarray  # (C_den, C_num, k, k)
    class_means: np.ndarray  # (C_den, C_num), mean over the included pairs
    n_floored: np.ndarray  # (C_den, C_num) pairs excluded because the denominator hit eps
    n_nonfinite: np.ndarray  # (C_den, C_num) pairs excluded because the ratio was not finite

    def pair_series(self) -> list:
        """Class means in the order of `pair_order` (one entry per ordered class pair)."""
        return [float(self.class_means[den, num]) for num, den in pair_order(len(self.class_means))]


def summarize_s_rel(
    changes: torch.Tensor,
    targets,
    n_classes: int,
    definition: str = "kl",
    eps: float = 1e-8,
    include_self: bool = False,
) -> SRelMeasurement:
    """Turn an (n, n) matrix of output changes into S_rel per class pair.

    Args:
        changes: (n, n) output changes, row i = update on point i (rows gathered in point order).
        targets: (n,) class of each reference point; every class must have the same count k.
        eps: floor of the denominator; pairs whose denominator is below it are excluded, counted.
        include_self: keep the self-pairs S_rel(x, x) = 1 in own-class means.
    """
    changes = torch.as_tensor(changes, dtype=torch.float64).numpy()
    targets = np.asarray(targets)
    n = len(targets)
    if changes.shape != (n, n):
        raise ValueError(f"changes must be ({n}, {n}) for {n} reference points, got {changes.shape}.")
    groups = [np.flatnonzero(targets == c) for c in range(n_classes)]
    counts = {len(g) for g in groups}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(
            f"Every class needs the same number of reference points, got "
            f"{[len(g) for g in groups]}."
        )

    den = np.diag(changes).copy()  # (n,)
    floored = den < eps
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = changes / np.maximum(den, eps)[:, None]  # (n, n)
    nonfinite = ~np.isfinite(ratio) & ~floored[:, None]
    excluded = floored[:, None] | nonfinite
    if not include_self:
        excluded |= np.eye(n, dtype=bool)
    values = np.where(excluded, np.nan, ratio)

    k = counts.pop()
    pair_values = np.empty((n_classes, n_classes, k, k))
    n_floored = np.zeros((n_classes, n_classes), dtype=np.int64)
    n_nonfinite = np.zeros_like(n_floored)
    for d, rows in enumerate(groups):
        for c, cols in enumerate(groups):
            block = np.ix_(rows, cols)
            pair_values[d, c] = values[block]
            n_floored[d, c] = (floored[rows][:, None] & ~np.eye(n, dtype=bool)[block]).sum()
            n_nonfinite[d, c] = nonfinite[block].sum()
    flat = pair_values.reshape(n_classes, n_classes, -1)
    n_valid = np.isfinite(flat).sum(-1)
    class_means = np.where(n_valid > 0, np.nansum(flat, -1) / np.maximum(n_valid, 1), np.nan)
    return SRelMeasurement(definition, pair_values, class_means, n_floored, n_nonfinite)


def measure_s_rel(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    n_classes: int,
    definitions=("kl",),
    update: str = "adam",
    lr: float = 1e-4,
    eps: float = 1e-8,
    dtype=None,
    include_self: bool = False,
) -> dict:
    """One S_rel measurement on the reference set: {definition: SRelMeasurement}."""
    changes = compute_output_changes(
        model, inputs, targets, definitions=definitions, update=update, lr=lr, dtype=dtype
    )
    return {
        d: summarize_s_rel(c, targets.cpu(), n_classes, d, eps=eps, include_self=include_self)
        for d, c in changes.items()
    }


def select_reference_points(targets, k: int, n_classes: int, seed: int) -> np.ndarray:
    """k training indices per class, drawn without replacement with `seed`, grouped by class."""
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(n_classes):
        pool = np.flatnonzero(targets == c)
        if k > len(pool):
            raise ValueError(
                f"k={k} reference points per class requested but class {c} has only "
                f"{len(pool)} training examples; lower k."
            )
        chosen.append(np.sort(rng.choice(pool, size=k, replace=False)))
    return np.concatenate(chosen)
