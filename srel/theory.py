"""Closed forms of the original S_rel along gradient flows of three predictor classes.

References:
  He & Su, "The Local Elasticity of Neural Networks", ICLR 2020 (the original S_rel).
  Dan, Mukherjee, Das, Gampa, "Dynamics of Local Elasticity During Training of Neural Nets",
  arXiv 2111.01166 (random features with a ridge penalty, a ReLU gate, homogeneous predictors).

S_rel here is always the original ("suhe") form taken to first order in the step size eta:

    S_rel(x, x') = lim_{eta -> 0} ||f(x'; w+) - f(x'; w)|| / ||f(x; w+) - f(x; w)||,
    w+ = w - eta * grad_w l_x(w),

with l_x the per-example objective whose mean over the training set is the training objective.
The weights w = w(t) follow the gradient flow dw/dt = -rate * grad L(w) of that objective.
Three classes, each with its flow in closed form:
  1. random ReLU features h = ReLU(W x), one linear map per class, squared loss + ridge:
     a linear flow, w(t) by a matrix exponential;
  2. a single ReLU gate f(x) = ReLU(w.x): piecewise linear flow between activation changes,
     each piece in closed form, the switching times found by root-finding;
  3. f(x) = <u^d, x> (elementwise power, homogeneous of degree d in u, linear in x) on an
     orthogonal design: the flow splits into scalar ODEs, solved exactly.
The derivations are written out in Scripts/Theory_Random_Features.ipynb and
Scripts/Theory_ReLU_Homogeneous.ipynb.
"""
import numpy as np
import pandas as pd
import scipy.linalg
import scipy.optimize
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

S_REL_LABEL = r"$S_{\mathrm{rel}}$"
PAIR_KINDS = ("inter", "intra")


def _new_figure(**kwargs) -> Figure:
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)  # drawn without pyplot: nothing accumulates in pyplot's registry
    return fig


def _check_times(times) -> np.ndarray:
    times = np.asarray(times, dtype=float).ravel()
    if times.size == 0 or np.any(~np.isfinite(times)) or np.any(times < 0):
        raise ValueError("times must be a non-empty array of finite, non-negative numbers.")
    if np.any(np.diff(times) < 0):
        raise ValueError("times must be sorted in increasing order.")
    return times


def _band(ax, x, runs, color, label, linestyle="-", log=True):
    """Mean over runs (axis 0) with a +-1 std band; on a log axis the band is clipped above 0."""
    mean, std = np.nanmean(runs, axis=0), np.nanstd(runs, axis=0)
    low = mean - std
    if log:
        low = np.where(low > 0, low, mean * 0.5)
    ax.plot(x, mean, color=color, label=label, linestyle=linestyle, lw=1.8)
    if runs.shape[0] > 1:
        ax.fill_between(x, low, mean + std, color=color, alpha=0.2, lw=0)


# ----------------------------------------------------------------------------------------------
# 1. classification by random ReLU features with a ridge penalty


def make_gaussian_classes(n_per_class=1000, dim=100, means=(1.0, 9.0), stds=(2.0, 1.0), seed=0):
    """Classes c = 0, 1, ... of isotropic Gaussians, mean means[c] and sd stds[c] per coordinate.

    Returns:
        inputs (n_classes * n_per_class, dim), labels (n_classes * n_per_class,), class-major.
    """
    if len(means) != len(stds) or len(means) < 2:
        raise ValueError("means and stds must have the same length, at least 2 (one per class).")
    if n_per_class < 1 or dim < 1 or min(stds) <= 0:
        raise ValueError("n_per_class and dim must be >= 1 and every sd > 0.")
    rng = np.random.default_rng(seed)
    inputs = np.concatenate(
        [m + s * rng.standard_normal((n_per_class, dim)) for m, s in zip(means, stds)]
    )
    labels = np.repeat(np.arange(len(means)), n_per_class)
    return inputs, labels


def relu_features(inputs, weights) -> np.ndarray:
    """h = ReLU(W x) for each row x: (n, dim) x (p, dim) -> (n, p)."""
    return np.maximum(inputs @ weights.T, 0.0)


def ridge_flow_weights(V0, features, targets, ridge, rate, times) -> np.ndarray:
    """Closed-form gradient flow of the linear maps on the features (squared loss + ridge).

    Objective L(V) = 1/(2n) sum_i ||V h_i - y_i||^2 + ridge/2 ||V||_F^2, flow dV/dt = -rate grad L.
    With A = H^T H / n + ridge I and B = Y^T H / n the flow is dV/dt = -rate (V A - B), so
        V(t) = V* + (V0 - V*) expm(-rate t A),   V* = B A^{-1}.

    Args:
        V0: (k, p) initial maps (one row per output). features: (n, p). targets: (n, k).
        ridge: penalty lambda > 0. rate: flow rate (theta^2). times: (T,) sorted, >= 0.
    Returns:
        (T, k, p) weights at the given times.
    """
    times = _check_times(times)
    if ridge <= 0 or rate <= 0:
        raise ValueError(f"ridge and rate must be > 0 (got ridge={ridge}, rate={rate}).")
    n, p = features.shape
    A = features.T @ features / n + ridge * np.eye(p)  # (p, p), symmetric positive definite
    B = targets.T @ features / n  # (k, p)
    V_star = np.linalg.solve(A, B.T).T  # (k, p)
    return np.stack([V_star + (V0 - V_star) @ scipy.linalg.expm(-rate * t * A) for t in times])


def ridge_flow_loss(V, features, targets) -> np.ndarray:
    """Empirical squared loss 1/(2n) sum_i ||V h_i - y_i||^2 (no ridge term): (T, k, p) -> (T,)."""
    residuals = np.einsum("tkp,np->tnk", V, features) - targets  # (T, n, k)
    return 0.5 * np.mean(np.sum(residuals**2, axis=-1), axis=-1)


def s_rel_ridge_features(V, h_x, y_x, h_xp, ridge) -> np.ndarray:
    """Closed-form original S_rel of the random-feature predictor f(x) = V h(x).

    The per-example objective is l_x(V) = 1/2 ||V h - y||^2 + ridge/2 ||V||^2 (its mean over the
    data is the training objective), so one step on x changes the outputs by
        f(x'; V+) - f(x'; V) = -eta [ r (h . h') + ridge V h' ],   r = V h - y,
    exactly (the predictor is linear in V, so no eta -> 0 limit is needed). Hence
        S_rel(x, x') = ||r (h . h') + ridge V h'|| / ||r ||h||^2 + ridge V h||.

    Args:
        V: (T, k, p) or (k, p) weights. h_x: (m, p) features of the updated examples x, with
        targets y_x: (m, k). h_xp: (m', p) features of the observed examples x'.
    Returns:
        (T, m, m') (or (m, m') for a single V): S_rel[t, i, j] for x = x_i, x' = x'_j.
    """
    single = V.ndim == 2
    V = V[None] if single else V
    out_x = np.einsum("tkp,mp->tmk", V, h_x)  # (T, m, k)
    out_xp = np.einsum("tkp,mp->tmk", V, h_xp)  # (T, m', k)
    residual = out_x - y_x  # (T, m, k)
    gram = h_x @ h_xp.T  # (m, m')
    numer = residual[:, :, None, :] * gram[None, :, :, None] + ridge * out_xp[:, None, :, :]
    denom = residual * np.sum(h_x**2, axis=1)[None, :, None] + ridge * out_x  # (T, m, k)
    s_rel = np.linalg.norm(numer, axis=-1) / np.linalg.norm(denom, axis=-1)[:, :, None]
    return s_rel[0] if single else s_rel


def run_random_features(
    n_features=(10, 100),
    n_per_class=1000,
    dim=100,
    means=(1.0, 9.0),
    stds=(2.0, 1.0),
    ridge=1.0,
    theta=1e-3,
    times=None,
    n_runs=10,
    n_pairs=20,
    init_std=None,
    pair_kinds=PAIR_KINDS,
    seed=0,
) -> dict:
    """Loss and S_rel along the closed-form flow for several feature counts and seeds.

    Data (two Gaussian classes) and the 2 x n_pairs reference points are drawn once from `seed`;
    every run draws a new feature matrix W (p, dim) ~ N(0, 1) and initial maps V0 ~ N(0,
    init_std^2) (init_std=None: 1/sqrt(p)). Targets are one-hot by class for pair kind "inter";
    for "intra" both classes get the target of class 0, so x and x' share a label while their
    inputs stay the same. S_rel is averaged over the n_pairs x n_pairs pairs with x from one
    class and x' from the other, in both directions.

    Returns:
        dict with "times" (T,), "params", and per p: result[p][kind] = {"loss": (runs, T),
        "s_rel_01": (runs, T) mean S_rel with x in class 0 and x' in class 1, "s_rel_10":
        (runs, T) the reverse, and "loss_start", "s_rel_01_start", "s_rel_10_start": (runs,)
        the values at t = 0}.
    """
    bad = [k for k in pair_kinds if k not in PAIR_KINDS]
    if bad or not pair_kinds:
        raise ValueError(f"Unknown pair kind(s) {bad or pair_kinds}; choose from {PAIR_KINDS}.")
    if n_pairs > n_per_class or n_pairs < 1:
        raise ValueError(f"n_pairs={n_pairs} must be between 1 and n_per_class={n_per_class}.")
    if n_runs < 1 or any(p < 1 for p in n_features):
        raise ValueError("n_runs and every entry of n_features must be >= 1.")
    times = np.geomspace(1.0, 1e8, 65) if times is None else _check_times(times)
    inputs, labels = make_gaussian_classes(n_per_class, dim, means, stds, seed)
    rng = np.random.default_rng(seed + 1)
    ref = [rng.choice(np.flatnonzero(labels == c), n_pairs, replace=False) for c in (0, 1)]
    one_hot = np.eye(2)[labels]  # (n, 2)
    shared = np.tile([1.0, 0.0], (labels.size, 1))  # (n, 2)
    result = {"times": times, "params": dict(
        n_features=tuple(n_features), n_per_class=n_per_class, dim=dim, means=tuple(means),
        stds=tuple(stds), ridge=ridge, theta=theta, n_runs=n_runs, n_pairs=n_pairs,
        init_std=init_std, pair_kinds=tuple(pair_kinds), seed=seed,
    )}
    for p in n_features:
        keys = ("loss", "s_rel_01", "s_rel_10", "loss_start", "s_rel_01_start", "s_rel_10_start")
        result[p] = {kind: {key: [] for key in keys} for kind in pair_kinds}
        for run in range(n_runs):
            run_rng = np.random.default_rng([seed, p, run])
            W = run_rng.standard_normal((p, dim))
            V0 = (init_std or p**-0.5) * run_rng.standard_normal((2, p))
            H = relu_features(inputs, W)  # (n, p)
            targets = {"inter": one_hot, "intra": shared}
            # the flow matrix A depends on the features only: one expm per time serves every kind
            V_all = ridge_flow_weights(
                np.concatenate([V0] * len(pair_kinds)), H,
                np.concatenate([targets[kind] for kind in pair_kinds], axis=1),
                ridge, theta**2, np.r_[0.0, times],
            )  # (T + 1, 2 * n_kinds, p)
            for n_kind, kind in enumerate(pair_kinds):
                Y = targets[kind]
                V = V_all[:, 2 * n_kind:2 * n_kind + 2]  # (T + 1, 2, p)
                s01 = s_rel_ridge_features(V, H[ref[0]], Y[ref[0]], H[ref[1]], ridge)
                s10 = s_rel_ridge_features(V, H[ref[1]], Y[ref[1]], H[ref[0]], ridge)
                loss = ridge_flow_loss(V, H, Y)
                s01, s10 = s01.mean(axis=(1, 2)), s10.mean(axis=(1, 2))
                out = result[p][kind]
                for key, values in (("loss", loss), ("s_rel_01", s01), ("s_rel_10", s10)):
                    out[key].append(values[1:])
                    out[f"{key}_start"].append(values[0])
        for kind in pair_kinds:
            result[p][kind] = {k: np.array(v) for k, v in result[p][kind].items()}
    return result


def plot_random_features(result) -> Figure:
    """Loss, mean S_rel and S_rel relative to its t = 0 value over time, per feature count.

    Mean +- std over runs. S_rel is drawn for both directions: solid x in class 0, x' in class 1;
    dashed the reverse. The last row divides each run's curve by its own value at t = 0, which
    shows changes far smaller than the spread between runs.
    """
    times, params = result["times"], result["params"]
    ps = params["n_features"]
    fig = _new_figure(figsize=(5.2 * len(ps), 10), layout="constrained")
    axes = fig.subplots(3, len(ps), squeeze=False, sharex=True)
    colors = dict(zip(PAIR_KINDS, sns.color_palette("deep", 2)))
    names = {"inter": "inter-class (distinct targets)", "intra": "intra-class (shared target)"}
    for col, p in enumerate(ps):
        for kind in params["pair_kinds"]:
            out, color = result[p][kind], colors[kind]
            _band(axes[0, col], times, out["loss"], color, names[kind])
            for direction, style in (("01", "-"), ("10", "--")):
                label = f"{kind}, x in {direction[0]}, x' in {direction[1]}"
                curve = out[f"s_rel_{direction}"]  # (runs, T)
                ratio = curve / out[f"s_rel_{direction}_start"][:, None]
                _band(axes[1, col], times, curve, color, label, linestyle=style)
                _band(axes[2, col], times, ratio, color, label, linestyle=style, log=False)
        axes[0, col].set_title(f"p = {p} random ReLU features")
        axes[0, col].set_ylabel("empirical loss (1/2n sum ||f - y||^2)")
        axes[1, col].set_ylabel(S_REL_LABEL + f" (mean over {params['n_pairs']}^2 pairs)")
        axes[2, col].set_ylabel(S_REL_LABEL + r"$(t)\, /\, $" + S_REL_LABEL + "$(0)$ per run")
        axes[2, col].set_xlabel(r"flow time $t$ (rate $\theta^2$ = %.0e)" % params["theta"] ** 2)
        for row, ax in enumerate(axes[:, col]):
            ax.set_xscale("log")
            if row < 2:
                ax.set_yscale("log")
            ax.grid(True, which="major", alpha=0.3)
        axes[0, col].legend(fontsize=8)
        axes[2, col].legend(fontsize=7)
    fig.suptitle(
        f"Random ReLU features, ridge {params['ridge']:g}, class means {params['means']}: "
        f"mean +- std over {params['n_runs']} initializations"
    )
    return fig


def summarize_random_features(result) -> pd.DataFrame:
    """One row per (p, pair kind, direction): S_rel at t = 0 and at the last time (mean and std
    over runs), the largest relative excursion max_t |S(t) - S(0)| / S(0) (mean over runs) and
    the final loss."""
    rows = []
    for p in result["params"]["n_features"]:
        for kind in result["params"]["pair_kinds"]:
            out = result[p][kind]
            for direction in ("01", "10"):
                curve = out[f"s_rel_{direction}"]  # (runs, T)
                start = out[f"s_rel_{direction}_start"]  # (runs,) at t = 0
                excursion = np.max(np.abs(curve - start[:, None]), axis=1) / start
                rows.append(dict(
                    p=p, kind=kind, x_class=int(direction[0]), x_prime_class=int(direction[1]),
                    s_rel_start=start.mean(), s_rel_end=curve[:, -1].mean(),
                    s_rel_end_std=curve[:, -1].std(), max_relative_change=excursion.mean(),
                    loss_start=out["loss_start"].mean(), loss_end=out["loss"][:, -1].mean(),
                ))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# 2. a single ReLU gate f(x) = ReLU(w . x) on the squared loss


class _LinearPiece:
    """Closed-form flow dw/dt = -(A w - b) of the gate while its active set S stays fixed.

    A = X_S^T X_S / n and b = X_S^T y_S / n; b lies in the range of A, so with A = Q diag(lam) Q^T
    each eigen-coordinate relaxes on its own: c_k(tau) = c_inf_k + (c_k(0) - c_inf_k) e^{-lam_k tau}
    (null directions, lam_k = 0, do not move).
    """

    def __init__(self, X, y, active, w_start):
        n = X.shape[0]
        A = X[active].T @ X[active] / n  # (D, D)
        b = X[active].T @ y[active] / n  # (D,)
        lam, self.Q = np.linalg.eigh(A)
        self.pos = lam > 1e-12 * max(lam.max(initial=0.0), 1e-300)
        self.lam = np.where(self.pos, lam, 0.0)
        c0 = self.Q.T @ w_start
        self.c_inf = np.where(self.pos, (self.Q.T @ b) / np.where(self.pos, lam, 1.0), c0)
        self.c_delta = c0 - self.c_inf

    def weights(self, tau) -> np.ndarray:
        """(len(tau), D) weights after flow time tau (array) within this piece."""
        decay = np.exp(-np.outer(np.atleast_1d(tau), self.lam))  # (T, D)
        return (self.c_inf + self.c_delta * decay) @ self.Q.T

    def slowest_time(self) -> float:
        return np.inf if not self.pos.any() else 1.0 / self.lam[self.pos].min()

    def fastest_time(self) -> float:
        return np.inf if not self.pos.any() else 1.0 / self.lam[self.pos].max()


def _first_switch(piece, X, active, horizon, grid_size=600):
    """Earliest tau in (0, horizon] at which some input's activation flips, or (inf, None)."""
    if not piece.pos.any():  # nothing active: the weights do not move, nothing can flip
        return np.inf, None
    # NOTE: after ~40 slowest time constants every exponential is below 1e-17 - no later flip
    end = min(horizon, 40.0 * piece.slowest_time())
    grid = np.unique(np.r_[
        np.geomspace(1e-6 * min(piece.fastest_time(), end), end, grid_size),
        np.linspace(0.0, end, grid_size)[1:],
    ])
    margins = X @ piece.weights(grid).T  # (n, G)
    tol = 1e-11 * max(np.abs(margins).max(), 1e-300)
    wrong = np.where(active[:, None], margins < -tol, margins > tol)  # (n, G)
    hits = np.flatnonzero(wrong.any(axis=0))
    if hits.size == 0:
        return np.inf, None
    j = hits[0]
    left = grid[j - 1] if j > 0 else 0.0
    best_tau, best_i = np.inf, None
    for i in np.flatnonzero(wrong[:, j]):
        def margin(tau, i=i):
            return float(X[i] @ piece.weights(tau)[0])
        if margin(left) * margin(grid[j]) < 0:
            tau = scipy.optimize.brentq(margin, left, grid[j], xtol=1e-15)
        else:
            tau = left
        if tau < best_tau:
            best_tau, best_i = tau, i
    return best_tau, best_i


def relu_gate_flow(w0, X, y, times, max_switches=10_000) -> dict:
    """Exact gradient flow of f(x) = ReLU(w . x) on L(w) = 1/(2n) sum_i (f(x_i) - y_i)^2.

    While the active set S = {i : w . x_i > 0} is fixed, the flow dw/dt = -(A_S w - b_S) is
    linear and solved in closed form (`_LinearPiece`); the time at which the first margin
    w(t) . x_i changes sign is the root of a sum of exponentials, found on a fine grid and refined
    with Brent's method; the flow then restarts with i switched. Targets must be >= 0: then at
    each switch the flow crosses the boundary w . x_i = 0 instead of sliding along it (at the
    switch the velocity of w . x_i changes by ||x_i||^2 y_i / n in the direction it already had).
    Two sign changes of one margin within one cell of the search grid (1/600 of a piece) would
    be missed; the tests against tiny-step gradient descent bound this in practice.

    Args:
        w0: (D,) initial weights. X: (n, D) inputs. y: (n,) targets >= 0. times: (T,) sorted.
    Returns:
        dict with "weights" (T, D) and "switch_times" (list of flow times of activation changes).
    """
    times = _check_times(times)
    X, y, w = np.asarray(X, float), np.asarray(y, float), np.asarray(w0, float).copy()
    if X.ndim != 2 or y.shape != (X.shape[0],) or w.shape != (X.shape[1],):
        raise ValueError(f"Need X (n, D), y (n,), w0 (D,); got {X.shape}, {y.shape}, {w.shape}.")
    if np.any(y < 0):
        raise ValueError("relu_gate_flow needs targets y >= 0 (the flow may slide otherwise).")
    out = np.empty((times.size, w.size))
    active = X @ w > 0
    t_start, k, switches = 0.0, 0, []
    while k < times.size:
        piece = _LinearPiece(X, y, active, w)
        tau, i = _first_switch(piece, X, active, times[-1] - t_start)
        t_switch = t_start + tau
        stop = np.searchsorted(times, t_switch, side="right")
        if stop > k:
            out[k:stop] = piece.weights(times[k:stop] - t_start)
            k = stop
        if i is None:
            break
        if len(switches) >= max_switches:
            raise RuntimeError(f"more than {max_switches} activation switches; the flow chatters.")
        w = piece.weights(tau)[0]
        active[i] = ~active[i]
        switches.append(t_switch)
        t_start = t_switch
    return {"weights": out, "switch_times": switches}


def relu_gate_loss(weights, X, y) -> np.ndarray:
    """1/(2n) sum_i (ReLU(w . x_i) - y_i)^2 per weight vector: (T, D) -> (T,)."""
    return 0.5 * np.mean((np.maximum(weights @ X.T, 0.0) - y) ** 2, axis=1)


def relu_gate_s_rel(weights, x, x_prime) -> np.ndarray:
    """Original S_rel of the ReLU gate to first order in the step.

    A step on x (squared loss, residual r != 0) moves w by -eta r 1[w.x > 0] x, hence
        S_rel(x, x') = 1[w . x' > 0] |x . x'| / ||x||^2   when w . x > 0,
    and is undefined (NaN here) when w . x <= 0, since then the step does not move w.

    Args:
        weights: (T, D). x: (m, D) updated examples. x_prime: (m', D) observed examples.
    Returns:
        (T, m, m') S_rel with NaN where x is inactive.
    """
    ratio = np.abs(x @ x_prime.T) / np.sum(x**2, axis=1)[:, None]  # (m, m')
    x_on = (weights @ x.T > 0)[:, :, None]  # (T, m, 1)
    xp_on = (weights @ x_prime.T > 0)[:, None, :]  # (T, 1, m')
    return np.where(x_on, ratio[None] * xp_on, np.nan)


def run_relu_gate(
    dim=10,
    n_train=200,
    init_angles_deg=(30.0, 90.0, 150.0),
    init_norm=0.5,
    n_pairs=20,
    times=None,
    seed=0,
) -> dict:
    """ReLU gate learning a ReLU teacher w* = e_1 from several initial angles to w*.

    Inputs are N(0, I); targets y = ReLU(w* . x). w0 = init_norm (cos a e_1 + sin a e_2).
    Reference points are split by the teacher: class A = {w* . x > 0}, class B = the rest. S_rel is
    averaged over pairs with x in A (n_pairs points) and x' in A ("intra", n_pairs other points)
    or in B ("inter"), over the pairs where it is defined (w . x > 0).

    Returns:
        dict with "times" (T,), "params", and per angle a: result[a] = {"loss" (T,),
        "intra" (T,), "inter" (T,), "defined" (T,) fraction of x with w . x > 0,
        "switch_times" list, "cosine" (T,) cosine between w(t) and w*}.
    """
    if dim < 2 or n_train < 1 or n_pairs < 1:
        raise ValueError("Need dim >= 2, n_train >= 1 and n_pairs >= 1.")
    times = np.geomspace(1e-2, 1e3, 151) if times is None else _check_times(times)
    rng = np.random.default_rng(seed)
    teacher = np.eye(dim)[0]
    X = rng.standard_normal((n_train, dim))
    y = np.maximum(X @ teacher, 0.0)
    ref = rng.standard_normal((8 * n_pairs + 16, dim))
    ref_a, ref_b = ref[ref @ teacher > 0], ref[ref @ teacher <= 0]
    if len(ref_a) < 2 * n_pairs or len(ref_b) < n_pairs:
        raise RuntimeError("too few reference points on one side of the teacher; change seed.")
    x, x_intra, x_inter = ref_a[:n_pairs], ref_a[n_pairs:2 * n_pairs], ref_b[:n_pairs]
    result = {"times": times, "params": dict(
        dim=dim, n_train=n_train, init_angles_deg=tuple(init_angles_deg), init_norm=init_norm,
        n_pairs=n_pairs, seed=seed,
    )}
    for angle in init_angles_deg:
        a = np.deg2rad(angle)
        w0 = init_norm * (np.cos(a) * np.eye(dim)[0] + np.sin(a) * np.eye(dim)[1])
        flow = relu_gate_flow(w0, X, y, times)
        W = flow["weights"]
        intra = relu_gate_s_rel(W, x, x_intra)
        with np.errstate(invalid="ignore"):
            cosine = W @ teacher / np.linalg.norm(W, axis=1)
        result[angle] = {
            "loss": relu_gate_loss(W, X, y),
            "intra": _nanmean_pairs(intra),
            "inter": _nanmean_pairs(relu_gate_s_rel(W, x, x_inter)),
            "defined": np.mean(W @ x.T > 0, axis=1),
            "switch_times": flow["switch_times"],
            "cosine": cosine,
        }
    return result


def _nanmean_pairs(s_rel) -> np.ndarray:
    """Mean over the (m, m') pair axes ignoring NaN; NaN where no pair is defined. (T,)"""
    count = np.sum(~np.isnan(s_rel), axis=(1, 2))
    total = np.nansum(s_rel, axis=(1, 2))
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def plot_relu_gate(result) -> Figure:
    """Loss, alignment with the teacher, and intra/inter S_rel over time, one color per angle."""
    times, params = result["times"], result["params"]
    fig = _new_figure(figsize=(14, 4.2), layout="constrained")
    ax_loss, ax_cos, ax_s = fig.subplots(1, 3, sharex=True)
    colors = sns.color_palette("deep", len(params["init_angles_deg"]))
    for color, angle in zip(colors, params["init_angles_deg"]):
        out = result[angle]
        label = f"initial angle {angle:g} deg"
        ax_loss.plot(times, out["loss"], color=color, label=label)
        ax_cos.plot(times, out["cosine"], color=color, label=label)
        ax_s.plot(times, out["intra"], color=color, label=f"{label}, intra")
        ax_s.plot(times, out["inter"], color=color, linestyle="--", label=f"{label}, inter")
    ax_loss.set_yscale("log")
    ax_loss.set_ylim(bottom=max(ax_loss.get_ylim()[0], 1e-16))  # exact convergence reaches 1e-32
    ax_loss.set_ylabel("training loss")
    ax_cos.set_ylabel(r"cosine between $w(t)$ and teacher $w^*$")
    ax_s.set_ylabel(S_REL_LABEL + f" (mean over defined pairs of {params['n_pairs']}^2)")
    for ax, title in zip((ax_loss, ax_cos, ax_s), ("loss", "alignment", "S_rel: intra solid, "
                                                                         "inter dashed")):
        ax.set_xscale("log")
        ax.set_xlabel("flow time t")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    ax_loss.legend(fontsize=8)
    ax_s.legend(fontsize=7)
    fig.suptitle(f"Single ReLU gate learning a ReLU teacher (dim {params['dim']}, "
                 f"n = {params['n_train']}, |w0| = {params['init_norm']})")
    return fig


def summarize_relu_gate(result) -> pd.DataFrame:
    """One row per initial angle: loss, alignment, switches and intra/inter S_rel, first vs last."""
    rows = []
    for angle in result["params"]["init_angles_deg"]:
        out = result[angle]
        rows.append(dict(
            init_angle_deg=angle, n_switches=len(out["switch_times"]),
            loss_start=out["loss"][0], loss_end=out["loss"][-1],
            cosine_start=out["cosine"][0], cosine_end=out["cosine"][-1],
            intra_start=out["intra"][0], inter_start=out["inter"][0],
            intra_end=out["intra"][-1], inter_end=out["inter"][-1],
        ))
    return pd.DataFrame(rows)


def _settle_time(times, curve, fraction=0.9) -> float:
    """First time at which curve has covered `fraction` of its total change (first -> last)."""
    change = curve[-1] - curve[0]
    if change == 0:
        return np.nan
    covered = (curve - curve[0]) / change
    return float(times[np.argmax(covered >= fraction)])


# ----------------------------------------------------------------------------------------------
# 3. predictors homogeneous in the weights, linear in the features: f(x) = <u^d, x>


def make_orthogonal_design(n, sigma, seed=0) -> np.ndarray:
    """Inputs X (n, D) with X^T X / n = diag(sigma^2) exactly (orthonormal columns, scaled)."""
    sigma = np.asarray(sigma, dtype=float)
    if sigma.ndim != 1 or n < sigma.size or np.any(sigma <= 0):
        raise ValueError(f"Need 1-D sigma > 0 and n >= len(sigma); got n={n}, {sigma.shape}.")
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, sigma.size)))
    return np.sqrt(n) * Q * sigma  # (n, D)


def _power_antiderivative(z, d, s) -> np.ndarray:
    """G(z) = integral dz / (z^{d-1} (z^d - s)) for z > 0, d >= 3, s = +-1 (up to a constant).

    With rho_k the d roots of rho^d = s:  1/(z^{d-1}(z^d - s)) = s z/(z^d - s) - s z^{1-d}, and
    z/(z^d - s) = 1/(d s) sum_k rho_k^2 / (z - rho_k). Hence
        G(z) = 1/d Re sum_k rho_k^2 log(z - rho_k) + s z^{2-d} / (d - 2).
    (Complex roots keep z - rho_k off the branch cut; a real root contributes log|z - rho_k|.)
    """
    k = np.arange(d)
    roots = np.exp(1j * np.pi * (2 * k + (1 - s) / 2) / d)  # (d,)
    z = np.asarray(z, dtype=float)
    logs = np.log(z[..., None] - roots)  # (..., d), complex
    return np.real(np.sum(roots**2 * logs, axis=-1)) / d + s * z ** (2 - d) / (d - 2)


def _scalar_power_flow(u0, c, b, d, times) -> np.ndarray:
    """Exact solution of u' = -d c u^{d-1} (u^d - b), u(0) = u0 > 0, d >= 3, b != 0. (T,)

    With z = u / |b|^{1/d}, s = sign(b), kappa = d c |b|^{2 - 2/d}: z' = -kappa z^{d-1} (z^d - s),
    so t = (G(z0) - G(z)) / kappa, G monotone between z0 and the attractor (1 if s = 1, else 0);
    z(t) inverts that relation by Brent's method on a bracket ending at the attractor.
    """
    s = 1.0 if b > 0 else -1.0
    scale = abs(b) ** (1.0 / d)
    kappa = d * c * abs(b) ** (2.0 - 2.0 / d)
    z0 = u0 / scale
    G0 = _power_antiderivative(z0, d, s)
    out = np.empty(times.size)
    for n, t in enumerate(times):
        if t == 0 or (z0 == 1.0 and s > 0):
            out[n] = z0
            continue
        def gap(z):
            return _power_antiderivative(z, d, s) - (G0 - kappa * t)
        if s > 0:
            near = 1.0 - 1e-15 if z0 < 1 else 1.0 + 1e-15  # next to the attractor z = 1
        else:
            near = z0 / 2.0
            while gap(near) > 0 and near > 1e-150:
                near /= 2.0
        if gap(near) > 0:  # closer to the attractor than double precision resolves
            out[n] = 1.0 if s > 0 else near
            continue
        lo, hi = sorted((z0, near))
        out[n] = scipy.optimize.brentq(gap, lo, hi, xtol=1e-300)
    return scale * out


def homogeneous_flow(u0, sigma2, beta_star, degree, times) -> np.ndarray:
    """Closed-form gradient flow of f(x) = <u^d, x> (elementwise power) on an orthogonal design.

    For L(u) = 1/(2n) ||X u^d - y||^2 with X^T X / n = diag(sigma2) the loss is, up to a constant,
    1/2 sum_j sigma2_j (u_j^d - beta*_j)^2 with beta* the least-squares solution, so each
    coordinate follows u' = -d sigma2 u^{d-1} (u^d - beta*) on its own:
      d = 1:          u(t) = beta* + (u0 - beta*) e^{-sigma2 t};
      d >= 2, b = 0:  u(t)^{2-2d} = u0^{2-2d} + 2 d (d-1) sigma2 t;
      d = 2:          v = u^2 is logistic, v(t) = b v0 / (v0 + (b - v0) e^{-4 sigma2 b t});
      d >= 3:         implicit closed form t(u), inverted numerically (`_scalar_power_flow`).
    For d >= 2 the sign of u never changes (u = 0 is a fixed point); a negative u is mapped to a
    positive one with b replaced by (-1)^d b.

    Args:
        u0: (D,) initial weights. sigma2: (D,) > 0. beta_star: (D,). degree: integer d >= 1.
        times: (T,) sorted, >= 0.
    Returns:
        (T, D) weights.
    """
    times = _check_times(times)
    u0, sigma2, b = (np.asarray(a, dtype=float) for a in (u0, sigma2, beta_star))
    d = int(degree)
    if d != degree or d < 1:
        raise ValueError(f"degree must be an integer >= 1, got {degree!r}.")
    if not (u0.shape == sigma2.shape == b.shape) or u0.ndim != 1 or np.any(sigma2 <= 0):
        raise ValueError("u0, sigma2, beta_star must be 1-D of the same length, sigma2 > 0.")
    t = times[:, None]
    if d == 1:
        return b + (u0 - b) * np.exp(-sigma2 * t)
    sign = np.sign(u0)
    mag = np.abs(u0)
    b_eff = b * sign**d  # target for |u| after mapping u -> -u when u0 < 0
    out = np.zeros((times.size, u0.size))
    for j in np.flatnonzero(mag > 0):
        c, bj, m0 = sigma2[j], b_eff[j], mag[j]
        if bj == 0:
            out[:, j] = (m0 ** (2 - 2 * d) + 2 * d * (d - 1) * c * times) ** (1.0 / (2 - 2 * d))
        elif d == 2:
            v0 = m0**2
            with np.errstate(over="ignore"):
                v = bj * v0 / (v0 + (bj - v0) * np.exp(-4 * c * bj * times))
            out[:, j] = np.sqrt(v)
        else:
            out[:, j] = _scalar_power_flow(m0, c, bj, d, times)
    return out * sign


def homogeneous_loss(weights, degree, sigma2, beta_star) -> np.ndarray:
    """1/2 sum_j sigma2_j (u_j^d - beta*_j)^2 (the loss above its least-squares floor). (T,)"""
    return 0.5 * np.sum(sigma2 * (weights**degree - beta_star) ** 2, axis=-1)


def homogeneous_s_rel(weights, degree, x, x_prime) -> np.ndarray:
    """Original S_rel of f(x) = <u^d, x> to first order in the step.

    grad_u f(x) = d u^{d-1} * x, and a step on x moves u by -eta r d u^{d-1} * x, so
        S_rel(x, x') = |sum_j m_j x_j x'_j| / sum_j m_j x_j^2,   m_j = u_j^{2d-2}
    (the residual r cancels; for d = 1, m = 1 and S_rel never changes).

    Args:
        weights: (T, D). x: (m, D). x_prime: (m', D).
    Returns:
        (T, m, m').
    """
    metric = weights ** (2 * degree - 2)  # (T, D)
    numer = np.abs(np.einsum("td,md,nd->tmn", metric, x, x_prime))
    denom = np.einsum("td,md,md->tm", metric, x, x)
    with np.errstate(invalid="ignore", divide="ignore"):
        return numer / denom[:, :, None]


def run_homogeneous(
    dim=50,
    n_relevant=4,
    degrees=(1, 2, 3),
    init_scales=(0.1, 0.01),
    class_mean=3.0,
    noise=1.0,
    n_pairs=20,
    times=None,
    seed=0,
) -> dict:
    """S_rel of f(x) = <u^d, x> learning a sparse target, for several degrees and init scales.

    Whitened design (sigma2 = 1); beta* = 1 on the first n_relevant coordinates, 0 elsewhere;
    u0 = init_scale * 1 (positive, so every degree can reach beta*). Reference classes: class 0
    has mean class_mean on the first half of the relevant coordinates, class 1 on the second half;
    both add N(0, noise^2) on all dim coordinates. S_rel is averaged over n_pairs x n_pairs pairs
    with x in class 0 and x' in class 0 (other points, "intra") or class 1 ("inter").

    Returns:
        dict with "times", "params", and result[(degree, init_scale)] = {"loss", "intra",
        "inter", "intra_std", "inter_std"}, each (T,) (std over pairs).
    """
    if not 2 <= n_relevant <= dim:
        raise ValueError(f"Need 2 <= n_relevant <= dim; got n_relevant={n_relevant}, dim={dim}.")
    times = np.geomspace(1e-2, 1e5, 141) if times is None else _check_times(times)
    sigma2 = np.ones(dim)
    beta_star = np.r_[np.ones(n_relevant), np.zeros(dim - n_relevant)]
    half = n_relevant // 2
    means = np.zeros((2, dim))
    means[0, :half], means[1, half:n_relevant] = class_mean, class_mean
    rng = np.random.default_rng(seed)
    x = means[0] + noise * rng.standard_normal((n_pairs, dim))
    x_intra = means[0] + noise * rng.standard_normal((n_pairs, dim))
    x_inter = means[1] + noise * rng.standard_normal((n_pairs, dim))
    result = {"times": times, "params": dict(
        dim=dim, n_relevant=n_relevant, degrees=tuple(degrees), init_scales=tuple(init_scales),
        class_mean=class_mean, noise=noise, n_pairs=n_pairs, seed=seed,
    )}
    for d in degrees:
        for scale in init_scales:
            U = homogeneous_flow(np.full(dim, scale), sigma2, beta_star, d, times)
            intra = homogeneous_s_rel(U, d, x, x_intra)
            inter = homogeneous_s_rel(U, d, x, x_inter)
            result[(d, scale)] = {
                "loss": homogeneous_loss(U, d, sigma2, beta_star),
                "intra": intra.mean(axis=(1, 2)), "inter": inter.mean(axis=(1, 2)),
                "intra_std": intra.std(axis=(1, 2)), "inter_std": inter.std(axis=(1, 2)),
            }
    return result


def plot_homogeneous(result) -> Figure:
    """Per init scale: loss and intra (solid) / inter (dashed) S_rel over time per degree."""
    times, params = result["times"], result["params"]
    scales = params["init_scales"]
    fig = _new_figure(figsize=(5.2 * len(scales), 7.2), layout="constrained")
    axes = fig.subplots(2, len(scales), squeeze=False, sharex=True)
    colors = sns.color_palette("deep", len(params["degrees"]))
    for col, scale in enumerate(scales):
        for color, d in zip(colors, params["degrees"]):
            out = result[(d, scale)]
            axes[0, col].plot(times, out["loss"], color=color, label=f"d = {d}")
            axes[1, col].plot(times, out["intra"], color=color, label=f"d = {d}, intra")
            axes[1, col].plot(times, out["inter"], color=color, ls="--", label=f"d = {d}, inter")
        # the linear model's loss reaches 1e-300 (exact exponential decay): clip the axis
        axes[0, col].set_ylim(bottom=max(axes[0, col].get_ylim()[0], 1e-16))
        axes[0, col].set_title(f"initialization u0 = {scale:g} * 1")
        axes[0, col].set_ylabel("loss above least-squares floor")
        axes[1, col].set_ylabel(S_REL_LABEL + f" (mean over {params['n_pairs']}^2 pairs)")
        axes[1, col].set_xlabel("flow time t")
        for ax in axes[:, col]:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
        axes[0, col].legend(fontsize=8)
        axes[1, col].legend(fontsize=7)
    fig.suptitle(
        rf"$f(x) = \langle u^{{d}}, x\rangle$ on a whitened design: {params['n_relevant']} of "
        f"{params['dim']} coordinates relevant; intra solid, inter dashed"
    )
    return fig


def summarize_homogeneous(result) -> pd.DataFrame:
    """One row per (degree, init scale): intra/inter S_rel first vs last, and the times at which
    intra S_rel and the loss have covered 90% of their change (S_rel settles before the loss
    when the first is smaller)."""
    times, rows = result["times"], []
    for d in result["params"]["degrees"]:
        for scale in result["params"]["init_scales"]:
            out = result[(d, scale)]
            rows.append(dict(
                degree=d, init_scale=scale,
                intra_start=out["intra"][0], inter_start=out["inter"][0],
                intra_end=out["intra"][-1], inter_end=out["inter"][-1],
                t90_s_rel=_settle_time(times, out["intra"]),
                t90_loss=_settle_time(times, out["loss"]),
                loss_end=out["loss"][-1],
            ))
    return pd.DataFrame(rows)
