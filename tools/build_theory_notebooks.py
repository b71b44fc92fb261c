"""Write the theory and regression notebooks in Scripts/ (stored without outputs).

Run from anywhere: `python tools/build_theory_notebooks.py`. The notebooks call `srel.theory` and
`srel.regression`; derivations live in their markdown cells.
"""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

SCRIPTS = Path(__file__).resolve().parent.parent / "Scripts"
KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}
IMPORTS = "from pathlib import Path\n\nimport numpy as np\n\nfrom srel import io, theory"


def _write_stable(nb, path, *args, **kwargs):
    """Write with stable cell ids so that rebuilding an unchanged notebook changes no bytes."""
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"
    nbformat.write(nb, path, *args, **kwargs)


def parameters_cell(source: str):
    return new_code_cell(source, metadata={"tags": ["parameters"]})


def notebook(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = KERNEL
    nb.metadata["language_info"] = {"name": "python"}
    return nb


# ----------------------------------------------------------------------------------------------
# 1. random features with a ridge penalty

RF_INTRO = r"""# Local elasticity of a random-feature classifier with a ridge penalty (closed form)

Does the original $S_{\rm rel}$ of He & Su tell pairs of examples that share a label from pairs
that do not, when the whole training trajectory is known exactly? We take the paper's
random-feature classifier (Dan, Mukherjee, Das, Gampa, arXiv 2111.01166, section 3), whose
gradient flow is linear, and follow $S_{\rm rel}$ along it in closed form."""

RF_DERIVATION = r"""## Model, flow and $S_{\rm rel}$ in closed form

**Data.** Two classes of Gaussian inputs in $\mathbb{R}^{\rm dim}$: class 0 has mean 1 and
sd 2 per coordinate, class 1 mean 9 and sd 1; $n_k$ points per class, $n = 2 n_k$.

**Model.** Fixed random features $h(x) = \mathrm{ReLU}(W x) \in \mathbb{R}^p$ with
$W_{ij} \sim N(0, 1)$, and one linear map per class: $f(x) = V h(x) \in \mathbb{R}^2$ (row $k$
of $V$ scores class $k$). Targets $y_i \in \mathbb{R}^2$ are one-hot.

**Objective (normalised by $n$).** $L(V) = \frac1n \sum_i \ell_i(V)$ with the per-example
objective
$$\ell_i(V) = \tfrac12 \lVert V h_i - y_i \rVert^2 + \tfrac{\lambda}{2} \lVert V \rVert_F^2 .$$
We divide by $n$ on purpose: inputs of mean 9 give features of size $\sim 90$, so
$H^\top H$ (with $H \in \mathbb{R}^{n \times p}$ the feature matrix) has eigenvalues up to
$\sim n\, p \cdot 4\times 10^3$; normalised, the flow's time scales do not grow with $n$ and
$\theta^2 t A$ stays in a range where `scipy.linalg.expm` is accurate.

**Gradient flow** with rate $\theta^2$: $\dot V = -\theta^2 \nabla L(V) = -\theta^2 (V A - B)$
with $A = H^\top H / n + \lambda I$ (symmetric positive definite) and $B = Y^\top H / n$. A linear
ODE with constant coefficients, so
$$V(t) = V^* + (V_0 - V^*)\, e^{-\theta^2 t A}, \qquad V^* = B A^{-1}$$
(the ridge-regression solution), computed with `scipy.linalg.expm`.

**$S_{\rm rel}$.** One SGD step of size $\eta$ on $\ell_x$ (the ridge term is part of every
example's objective, as its mean is $L$): $V^+ = V - \eta\,(r h^\top + \lambda V)$ with
$r = V h - y$. Because $f$ is linear in $V$,
$f(x'; V^+) - f(x'; V) = -\eta\,\big(r\,(h \cdot h') + \lambda V h'\big)$ exactly, so for every
$\eta$ (no limit needed)
$$S_{\rm rel}(x, x'; t) = \frac{\lVert r(t)\,(h \cdot h') + \lambda V(t) h' \rVert}
{\lVert r(t)\,\lVert h \rVert^2 + \lambda V(t) h \rVert}, \qquad r(t) = V(t) h(x) - y(x).$$

**What to expect.** Without the ridge term this is $|h \cdot h'| / \lVert h \rVert^2$: constant in
time and blind to labels. Labels (and time) enter only through $\lambda V h'$, which competes
with $r\,(h \cdot h')$ where $h \cdot h' \sim 10^3$ to $10^5$. At the paper's $\lambda = 1$ we
therefore expect $S_{\rm rel}$ to stay within a fraction of a percent of its initial value; a
second run with a strong ridge shows where labels start to matter.

**Settings.** "inter": one-hot targets by class, so $x$ (one class) and $x'$ (the other) have
different labels. "intra": both classes get the target $e_0$, so the same inputs now share a
label. $S_{\rm rel}$ is averaged over $20 \times 20$ pairs, $x$ from one class and $x'$ from the
other, in both directions; curves are mean $\pm$ std over runs that redraw $W$ and
$V_0 \sim N(0, 1/p)$ (the data and the reference points are fixed)."""

RF_PARAMETERS = """\
n_features   = [10, 100]     # p, random features per run (paper: 10 and 100)
n_per_class  = 1000          # points per class (paper: 1000)
dim          = 100           # input dimension (paper: 100)
class_means  = [1.0, 9.0]    # per-coordinate mean of class 0, class 1
class_stds   = [2.0, 1.0]    # per-coordinate sd of class 0, class 1
ridge        = 1.0           # lambda of the paper's run
strong_ridge = 1e4           # lambda of the second run, where the ridge term matters
theta        = 1e-3          # flow rate theta^2 = 1e-6 (paper: theta = 0.001)
t_min        = 1.0           # first flow time shown (log axis)
t_max        = 1e8           # last flow time (the lambda = 1 flow has converged by ~1e7)
n_times      = 65            # log-spaced times
n_runs       = 10            # random initializations (W and V0)
n_pairs      = 20            # reference points per class: S_rel over n_pairs x n_pairs pairs
seed         = 0
assets_dir   = "Assets"      # relative paths are relative to the repository root
plots_dir    = "Plots\""""

RF_NOTE = r"""## What we saw
(defaults: the paper's data, $p \in \{10, 100\}$, $\theta = 10^{-3}$, 10 runs)

{note}"""


def random_features_notebook(note: str):
    run = (
        "{name} = theory.run_random_features(\n"
        "    n_features=n_features, n_per_class=n_per_class, dim=dim, means=class_means,\n"
        "    stds=class_stds, ridge={ridge}, theta=theta, times=TIMES, n_runs=n_runs,\n"
        "    n_pairs=n_pairs, seed=seed,\n"
        ")"
    )
    return notebook([
        new_markdown_cell(RF_INTRO),
        new_code_cell(IMPORTS),
        parameters_cell(RF_PARAMETERS),
        new_markdown_cell(RF_DERIVATION),
        new_markdown_cell("## Run the closed-form flow (paper's ridge, then a strong ridge)"),
        new_code_cell("TIMES = np.geomspace(t_min, t_max, n_times)\n"
                      + run.format(name="paper", ridge="ridge")),
        new_code_cell(run.format(name="strong", ridge="strong_ridge")),
        new_code_cell(
            "summaries = {name: theory.summarize_random_features(result)\n"
            "             for name, result in ((\"paper\", paper), (\"strong_ridge\", strong))}\n"
            "io.save_pickle(\n"
            "    {\"paper\": paper, \"strong_ridge\": strong,\n"
            "     \"summary\": {k: v.to_dict(\"records\") for k, v in summaries.items()}},\n"
            "    Path(assets_dir) / \"theory_random_features.pkl\",\n"
            ")"
        ),
        new_markdown_cell(r"## $\lambda$ = ridge (the paper's setting)"),
        new_code_cell("summaries[\"paper\"]"),
        new_code_cell(
            "fig = theory.plot_random_features(paper)\n"
            "io.save_figure(fig, Path(plots_dir) / \"Theory\" / \"random_features_paper.png\")\n"
            "fig"
        ),
        new_markdown_cell(r"## $\lambda$ = strong_ridge"),
        new_code_cell("summaries[\"strong_ridge\"]"),
        new_code_cell(
            "fig = theory.plot_random_features(strong)\n"
            "io.save_figure(\n"
            "    fig, Path(plots_dir) / \"Theory\" / \"random_features_strong_ridge.png\"\n"
            ")\n"
            "fig"
        ),
        new_markdown_cell(RF_NOTE.replace("{note}", note)),
    ])


# ----------------------------------------------------------------------------------------------
# 2. a ReLU gate and homogeneous predictors

RH_INTRO = r"""# Closed-form $S_{\rm rel}$ along gradient flow: a ReLU gate, homogeneous predictors

For two more predictor classes the gradient flow of the squared loss can be written down
exactly, and with it the original $S_{\rm rel}$ (He & Su) at every time. What do these formulas
say about how $S_{\rm rel}$ evolves, and about intra- versus inter-class pairs? (Dan, Mukherjee,
Das, Gampa, arXiv 2111.01166, sections 4-5; the derivations below are our own.)

Throughout, $S_{\rm rel}(x, x') = \lim_{\eta \to 0} |f(x'; w^+) - f(x'; w)| / |f(x; w^+) - f(x; w)|$
with $w^+ = w - \eta \nabla \ell_x(w)$, $\ell_x = \frac12 (f(x) - y)^2$, and $w = w(t)$ on the
flow $\dot w = -\nabla L(w)$, $L = \frac{1}{2n} \sum_i (f(x_i) - y_i)^2$."""

RH_GATE = r"""## (a) A single ReLU gate $f(x) = \mathrm{ReLU}(w \cdot x)$

**Assumptions.** Targets $y_i \ge 0$ (here from a ReLU teacher $y = \mathrm{ReLU}(w^* \cdot x)$,
$w^* = e_1$); $\mathrm{ReLU}'(0) = 0$.

**Flow.** With the active set $S(t) = \{ i : w(t) \cdot x_i > 0 \}$,
$\nabla L(w) = A_S w - b_S$, $A_S = \frac1n \sum_{i \in S} x_i x_i^\top$,
$b_S = \frac1n \sum_{i \in S} y_i x_i$. While $S$ is fixed the flow is linear: with
$A_S = Q \Lambda Q^\top$ and $c = Q^\top w$,
$$c_k(t) = c_k^\infty + \big(c_k(t_0) - c_k^\infty\big)\, e^{-\lambda_k (t - t_0)}, \qquad
c_k^\infty = (Q^\top b_S)_k / \lambda_k \ (\lambda_k > 0), \quad
c_k^\infty = c_k(t_0) \ (\lambda_k = 0)$$
($b_S$ lies in the range of $A_S$, so null directions do not move). $S$ changes at the first
zero of some margin $m_i(t) = x_i \cdot w(t)$, a constant plus a sum of exponentials: located on
a fine grid and refined by Brent's method; the flow then restarts with $i$ switched. At a switch
$\dot m_i$ jumps by $\lVert x_i \rVert^2 y_i / n \ge 0$ in the direction $m_i$ was already
moving, so with $y_i \ge 0$ the flow crosses $m_i = 0$ and never slides along it.

**$S_{\rm rel}$.** A step on $x$ moves $w$ by $-\eta\, r\, 1[w \cdot x > 0]\, x$, so to first order
$$S_{\rm rel}(x, x'; t) = 1[w(t) \cdot x' > 0]\; \frac{|x \cdot x'|}{\lVert x \rVert^2}
\qquad \text{if } w(t) \cdot x > 0,$$
undefined if $w(t) \cdot x \le 0$ (the step does not move $w$; such pairs are left out of the
means). The residual $r$ cancels, so the limit is also taken where $r \to 0$. A pair's
$S_{\rm rel}$ only jumps, when $x'$ changes side of $w(t)$.

**Setting.** Class A = teacher-active inputs ($w^* \cdot x > 0$), class B = the rest. $x$ from
A; $x'$ from A ("intra") or B ("inter"). $w_0 = |w_0| (\cos\alpha\, e_1 + \sin\alpha\, e_2)$
for several angles $\alpha$ to the teacher."""

RH_HOMOGENEOUS = r"""## (b) Predictors homogeneous in the weights and linear in the features

**Class.** $f(x) = \langle u^{d}, x \rangle = \sum_j u_j^d x_j$, $u \in \mathbb{R}^D$, integer
$d \ge 1$ (elementwise power): $f(x; c u) = c^d f(x; u)$ and $f$ is linear in $x$. $d = 1$ is the
linear model, $d = 2$ a diagonal linear network with tied layers.

**Assumption: orthogonal design**, $X^\top X / n = \mathrm{diag}(\sigma^2)$ (e.g. whitened
features). Then
$L(u) = \frac12 \sum_j \sigma_j^2 (u_j^d - \beta^*_j)^2 + \text{const}$ with $\beta^*$ the
least-squares solution, and the flow splits into scalar ODEs
$$\dot u_j = -d\, \sigma_j^2\, u_j^{d-1} (u_j^d - \beta^*_j).$$
Dropping the index ($\sigma^2$, $b = \beta^*_j$, $u_0$):

* $d = 1$: $u(t) = b + (u_0 - b)\, e^{-\sigma^2 t}$.
* $d \ge 2$, $b = 0$: $\dot u = -d \sigma^2 u^{2d-1}$, so
  $u(t)^{2-2d} = u_0^{2-2d} + 2d(d-1)\sigma^2 t$.
* $d = 2$: $v = u^2$ is logistic, $\dot v = -4\sigma^2 v (v - b)$, so
  $v(t) = \dfrac{b\, v_0}{v_0 + (b - v_0)\, e^{-4 \sigma^2 b t}}$.
* $d \ge 3$, $b \ne 0$, $u_0 > 0$: with $z = u / |b|^{1/d}$, $s = \mathrm{sign}\, b$,
  $\kappa = d \sigma^2 |b|^{2 - 2/d}$: $\dot z = -\kappa z^{d-1}(z^d - s)$, separable:
  $\kappa t = G(z_0) - G(z)$ with
  $$G(z) = \int \frac{dz}{z^{d-1}(z^d - s)} = \frac1d \,\mathrm{Re} \sum_{k=0}^{d-1} \rho_k^2
  \log(z - \rho_k) + \frac{s\, z^{2-d}}{d-2}, \qquad \rho_k^d = s,$$
  from $\frac{1}{z^{d-1}(z^d - s)} = s\big(\frac{z}{z^d - s} - z^{1-d}\big)$ and partial fractions
  $\frac{z}{z^d - s} = \frac{1}{ds} \sum_k \frac{\rho_k^2}{z - \rho_k}$. $G$ is monotone between
  $z_0$ and the attractor ($1$ if $s = 1$, $0$ if $s = -1$), so $z(t)$ is its unique inverse,
  found by Brent's method (the only numerical step).
* For $d \ge 2$, $u = 0$ is a fixed point, so $\mathrm{sign}\, u$ never changes; $u_0 < 0$ maps
  to $|u|$ with $b \to (-1)^d b$ (for odd $d$ a coefficient of the other sign is never learned).

**$S_{\rm rel}$.** $\nabla_u f(x) = d\, u^{d-1} \odot x$, so to first order
$$S_{\rm rel}(x, x'; t) = \frac{\big|\sum_j m_j(t)\, x_j x'_j\big|}{\sum_j m_j(t)\, x_j^2},
\qquad m_j(t) = u_j(t)^{2d-2}.$$
For $d = 1$, $m \equiv 1$ and $S_{\rm rel}$ never changes. For $d \ge 2$, $m_j \to
|\beta^*_j|^{2-2/d}$ on coordinates the target uses, while on the others
$m_j \sim 1 / (2d(d-1)\sigma^2 t) \to 0$: $S_{\rm rel}$ becomes the similarity of $x$ and $x'$
restricted to the relevant features.

**Setting.** $\sigma^2 = 1$; $\beta^* = 1$ on the first hom_relevant coordinates and 0 on the
rest; $u_0 = \alpha \mathbf 1$. Reference classes: class 0 has mean hom_class_mean on the first
half of the relevant coordinates, class 1 on the second half, both plus $N(0, 1)$ noise on all
coordinates. $x$ from class 0; $x'$ from class 0 ("intra") or class 1 ("inter")."""

RH_PARAMETERS = """\
gate_dim        = 10               # input dimension of the ReLU gate
gate_n_train    = 200              # training points, x ~ N(0, I), y = ReLU(x_1)
gate_angles     = [30, 90, 150]    # initial angle between w0 and the teacher, degrees
gate_init_norm  = 0.5              # |w0|
gate_t_max      = 1e2              # last flow time (first: 1e-2)
hom_dim         = 50               # coordinates of u
hom_relevant    = 4                # coordinates with beta* = 1 (the rest 0)
hom_degrees     = [1, 2, 3]        # homogeneity degrees d
hom_init_scales = [0.1, 0.01]      # u0 = alpha * 1
hom_class_mean  = 3.0              # class mean on its half of the relevant coordinates
hom_t_max       = 1e5              # last flow time (first: 1e-2)
n_pairs         = 20               # S_rel over n_pairs x n_pairs pairs
n_times         = 151              # log-spaced times
seed            = 0
assets_dir      = "Assets"         # relative paths are relative to the repository root
plots_dir       = "Plots\""""

RH_NOTE = r"""## What we saw (defaults)

{note}"""


def relu_homogeneous_notebook(note: str):
    return notebook([
        new_markdown_cell(RH_INTRO),
        new_code_cell(IMPORTS),
        parameters_cell(RH_PARAMETERS),
        new_markdown_cell(RH_GATE),
        new_code_cell(
            "gate = theory.run_relu_gate(\n"
            "    dim=gate_dim, n_train=gate_n_train, init_angles_deg=gate_angles,\n"
            "    init_norm=gate_init_norm, n_pairs=n_pairs, seed=seed,\n"
            "    times=np.geomspace(1e-2, gate_t_max, n_times),\n"
            ")\n"
            "gate_summary = theory.summarize_relu_gate(gate)\n"
            "gate_summary"
        ),
        new_code_cell(
            "fig = theory.plot_relu_gate(gate)\n"
            "io.save_figure(fig, Path(plots_dir) / \"Theory\" / \"relu_gate.png\")\n"
            "fig"
        ),
        new_markdown_cell(RH_HOMOGENEOUS),
        new_code_cell(
            "homogeneous = theory.run_homogeneous(\n"
            "    dim=hom_dim, n_relevant=hom_relevant, degrees=hom_degrees,\n"
            "    init_scales=hom_init_scales, class_mean=hom_class_mean, n_pairs=n_pairs,\n"
            "    times=np.geomspace(1e-2, hom_t_max, n_times), seed=seed,\n"
            ")\n"
            "homogeneous_summary = theory.summarize_homogeneous(homogeneous)\n"
            "homogeneous_summary"
        ),
        new_code_cell(
            "fig = theory.plot_homogeneous(homogeneous)\n"
            "io.save_figure(fig, Path(plots_dir) / \"Theory\" / \"homogeneous.png\")\n"
            "fig"
        ),
        new_code_cell(
            "io.save_pickle(\n"
            "    {\"relu_gate\": gate, \"homogeneous\": homogeneous,\n"
            "     \"summary\": {\"relu_gate\": gate_summary.to_dict(\"records\"),\n"
            "                 \"homogeneous\": homogeneous_summary.to_dict(\"records\")}},\n"
            "    Path(assets_dir) / \"theory_relu_homogeneous.pkl\",\n"
            ")"
        ),
        new_markdown_cell(RH_NOTE.replace("{note}", note)),
    ])


# ----------------------------------------------------------------------------------------------
# 3. neural regression: elastic then inelastic

REG_INTRO = r"""# Neural regression: an elastic phase, then an inelastic one

In neural regression, does the original $S_{\rm rel}$ first change quickly (elastic phase) and
then settle at a large value (inelastic phase)? Where is the switch, and what is the training
loss there? A linear model trained the same way is the control. (Dan, Mukherjee, Das, Gampa,
arXiv 2111.01166, the regression experiments.)"""

REG_METHOD = r"""## Task, measurement and switch rule

**Task.** $x \sim N(0, I_5)$, targets from a fixed random teacher with one hidden ReLU unit,
$y = a\,\mathrm{ReLU}(b \cdot x)$, standardised. The target depends on a single direction of
input space that the network has to find, so its tangent kernel must move away from its value
at initialization (feature learning); a linear model cannot fit it, and its tangent kernel
$x \cdot x' + 1$ never moves. A wider teacher (teacher_width) spreads the target over more
directions.

**Model.** ReLU MLP depth x width with PyTorch's default initialization scaled by init_scale;
full-batch gradient descent on $\frac{1}{2n} \sum_i (f(x_i) - y_i)^2$ with step lr.

**$S_{\rm rel}$.** For a step of size $\eta$ on $\ell_x = \frac12 (f(x) - y)^2$, to first order
$f(x'; w^+) - f(x'; w) = -\eta\, (f(x) - y)\, K(x', x)$ with the tangent kernel
$K(x', x) = \langle \nabla_w f(x'), \nabla_w f(x) \rangle$, so
$S_{\rm rel}(x, x') = |K(x, x')| / K(x, x)$: the residual cancels. We compute it for all
$N_{\rm probe}(N_{\rm probe} - 1)$ ordered pairs of the first n_probe training points from
per-sample gradients (`torch.func`); the tests check it against an explicit small SGD step.

**Switch rule.** With $m_k$ the median of $S_{\rm rel}$ over pairs at measured step $s_k$, the
relative rate is $\rho_k = |m_{k+1} - m_k| / (|m_k| (s_{k+1} - s_k))$ per step. The switch is the
first $s_k$ from which window consecutive rates are all below threshold (default $10^{-4}$:
less than 1% change per 100 steps, over 5 measurements = 50 steps)."""

REG_PARAMETERS = """\
dim           = 5              # input dimension
n_train       = 256            # training points (full batch)
n_probe       = 48             # probe points: S_rel over n_probe * (n_probe - 1) ordered pairs
teacher_width = 1              # hidden ReLU units of the teacher
width         = 64             # hidden units per layer of the MLP
depth         = 2              # hidden layers
init_scale    = 0.5            # multiplies PyTorch's default initialization
lr            = 0.05           # gradient-descent step
n_steps       = 3000           # gradient-descent steps
eval_every    = 10             # steps between S_rel measurements (plus a few early ones)
threshold     = 1e-4           # switch: relative change of median S_rel per step below this...
window        = 5              # ...for this many consecutive measurements
seeds         = [0, 1, 2, 3, 4]  # one run per seed: data, teacher and initialization
assets_dir    = "Assets"       # relative paths are relative to the repository root
plots_dir     = "Plots\""""

REG_NOTE = r"""## What we saw (defaults)

{note}"""


def regression_notebook(note: str):
    return notebook([
        new_markdown_cell(REG_INTRO),
        new_code_cell(
            "from pathlib import Path\n\nimport pandas as pd\nimport torch\n\n"
            "from srel import io, regression\n\n"
            "print(\"device: cpu (a small MLP), torch\", torch.__version__)"
        ),
        parameters_cell(REG_PARAMETERS),
        new_markdown_cell(REG_METHOD),
        new_code_cell(
            "result = regression.run_regression_phases(\n"
            "    dim=dim, n_train=n_train, n_probe=n_probe, teacher_width=teacher_width,\n"
            "    width=width, depth=depth, init_scale=init_scale, lr=lr, n_steps=n_steps,\n"
            "    eval_every=eval_every, threshold=threshold, window=window, seeds=seeds,\n"
            ")\n"
            "summary = regression.summarize_regression_phases(result)\n"
            "io.save_pickle({**result, \"summary\": summary},\n"
            "               Path(assets_dir) / \"regression_phases.pkl\")"
        ),
        new_code_cell("pd.Series(summary)"),
        new_code_cell(
            "pd.DataFrame([{\"seed\": r[\"seed\"], **{k: v for k, v in r[\"switch\"].items()\n"
            "                                       if k != \"rates\"}} for r in result[\"runs\"]])"
        ),
        new_code_cell(
            "fig = regression.plot_regression_phases(result)\n"
            "io.save_figure(fig, Path(plots_dir) / \"Regression\" / \"regression_phases.png\")\n"
            "fig"
        ),
        new_markdown_cell(REG_NOTE.replace("{note}", note)),
    ])


NOTES = {
    "Theory_Random_Features": """\
* **$\\lambda = 1$ (paper).** $S_{\\rm rel}$ is set by the feature geometry,
  $|h \\cdot h'| / \\lVert h \\rVert^2$, and hardly moves: its largest excursion from the $t = 0$
  value is 0.5% ($p = 10$) and 0.04% ($p = 100$) (mean over runs), while the loss falls from
  $\\sim 10^3$ to 0.097 ($p = 10$) and 0.012 ($p = 100$) by $t \\approx 10^6$. Intra and inter
  agree to three digits: $x$ in class 0, $x'$ in class 1 ends at 3.124 (inter) vs 3.123 (intra)
  for $p = 10$ (sd over runs 0.98) and 2.524 vs 2.524 for $p = 100$; the other direction at
  0.150 vs 0.150 and 0.142 vs 0.142. Which class is updated matters far more than the labels:
  features of the mean-9 class are much larger, so updates there move class-0 outputs little.
* **$\\lambda = 10^4$.** The ridge term now competes with the residual term: $S_{\\rm rel}$ moves by
  factors (a dip, then a plateau once the loss has converged at $t \\approx 10^3$), and labels
  matter, but not in one direction: for $p = 10$, $x$ in class 0 and $x'$ in class 1 end at
  $17.6 \\pm 10.5$ with a shared label vs $5.6 \\pm 1.6$ with distinct labels; for $p = 100$ the
  order flips ($2.19$ vs $2.68$); in the other direction the two differ by about 10%, either way.
* So in this model a shared label does not by itself raise the original $S_{\\rm rel}$; at the
  paper's ridge the flow leaves it essentially at its value at initialization.""",
    "Theory_ReLU_Homogeneous": """\
* **ReLU gate** (dim 10, $n = 200$, $|w_0| = 0.5$). From all three angles the flow reaches the
  teacher exactly (cosine 1, loss $< 10^{-23}$ by $t = 100$), after 28, 104 and 182 activation
  switches. Intra pairs end at 0.260 (the mean of $|x \\cdot x'| / \\lVert x \\rVert^2$),
  inter pairs at exactly 0, starting from intra 0.216 / 0.097 / 0.000 and inter
  0.023 / 0.110 / 0.292 (angles 30 / 90 / 150 degrees). Inter $S_{\\rm rel}$ reaches 0 at
  $t \\approx$ 0.19 / 2.1 / 4.1, when the loss is still 0.071 / 0.073 / 0.084: updates stop
  moving the other class's predictions long before the fit is good.
* **Homogeneous, $f = \\langle u^d, x \\rangle$** (50 coordinates, 4 relevant). $d = 1$: frozen at
  intra 0.295, inter 0.119. $d = 2, 3$: $S_{\\rm rel}$ rises, then stays: intra 0.30 to 0.855, inter
  0.12 to 0.261 (intra/inter from 2.5 to 3.3). It covers 90% of its change before the loss does:
  $t_{90}$ 1.0 vs 1.4 ($d = 2$, $\\alpha = 0.1$), 0.91 vs 2.7 ($d = 2$, $\\alpha = 0.01$),
  1.9 vs 3.3 ($d = 3$, $\\alpha = 0.1$), 20.6 vs 35.2 ($d = 3$, $\\alpha = 0.01$). Smaller
  initialization and higher degree delay the change and sharpen it. This is the
  elastic-then-inelastic shape of the regression experiments, here because the kernel
  concentrates on the relevant coordinates.""",
    "Regression_Phases": """\
5 seeds, dim 5, teacher width 1, MLP 2 x 64, init scale 0.5, lr 0.05, 3000 steps, 48 probe points:
* **Elastic phase.** The median $S_{\\rm rel}$ falls from $0.90 \\pm 0.01$ to a minimum of
  $0.44 \\pm 0.02$ at steps 120-200, while the loss drops from 0.5 to about $10^{-2}$.
* **Inelastic phase.** It then climbs back a little and stays: $0.56 \\pm 0.03$ at step 3000. The
  rule finds the switch at step $700 \\pm 228$ (400 to 1000), at training loss
  $(1.4 \\pm 0.5) \\times 10^{-3}$, with median $S_{\\rm rel}$ 0.50-0.57 there. After it,
  $S_{\\rm rel}$ still creeps up by about $5 \\times 10^{-5}$ per step, below the threshold.
* **Linear model.** $S_{\\rm rel}$ is constant at $0.289 \\pm 0.006$ (its kernel
  $x \\cdot x' + 1$ is fixed) and its loss stalls at 0.12: no phases. The MLP ends at about
  twice its $S_{\\rm rel}$.
* **Caveats.** The starting value 0.9 reflects the small initialization: at init scale 0.5 the
  output bias dominates the tangent kernel. At init scale 1 (same code, 5 seeds) the phases are
  the same with a lower plateau: start 0.57, minimum 0.41, end 0.43, switch at step $378 \\pm 187$,
  loss $4.1 \\times 10^{-3}$. A teacher of width 4 ends lower too (0.42; switch at step
  $694 \\pm 89$).""",
}

BUILDERS = {
    "Theory_Random_Features": random_features_notebook,
    "Theory_ReLU_Homogeneous": relu_homogeneous_notebook,
    "Regression_Phases": regression_notebook,
}


def main():
    for name, build in BUILDERS.items():
        nb = build(NOTES[name])
        nbformat.validate(nb)
        _write_stable(nb, SCRIPTS / f"{name}.ipynb")
        print(f"wrote Scripts/{name}.ipynb")


if __name__ == "__main__":
    main()
