"""Closed forms of srel.theory against tiny-step gradient descent and explicit one-example steps."""
import matplotlib
import numpy as np
import pytest
import torch

from srel import theory

matplotlib.use("Agg")


def _relative_error(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(b))


# ----------------------------------------------------------------------------------------------
# random features with a ridge penalty


@pytest.fixture(scope="module")
def small_features():
    """A small two-class problem: features (n, p), one-hot targets (n, 2), initial maps (2, p)."""
    inputs, labels = theory.make_gaussian_classes(15, 6, means=(0.5, 2.0), stds=(1.0, 0.5), seed=3)
    rng = np.random.default_rng(4)
    H = theory.relu_features(inputs, rng.standard_normal((5, 6)))  # (30, 5)
    Y = np.eye(2)[labels]
    V0 = rng.standard_normal((2, 5))
    return H, Y, V0


class TestRidgeFlow:
    def test_matches_tiny_step_gradient_descent(self, small_features):
        """Closed-form V(t) equals explicit-Euler gradient descent on the objective to 1e-4."""
        H, Y, V0 = small_features
        ridge, rate = 0.5, 0.02
        n = H.shape[0]
        top = np.linalg.eigvalsh(H.T @ H / n + ridge * np.eye(H.shape[1])).max()
        dt = 1e-4 / (rate * top)  # Euler error here is ~1.5e-5 relative, linear in dt
        checkpoints = np.array([0.3, 1.0, 3.0]) / (rate * top)
        closed = theory.ridge_flow_weights(V0, H, Y, ridge, rate, checkpoints)
        V, t, found = V0.copy(), 0.0, []
        for target in checkpoints:
            for _ in range(int(round((target - t) / dt))):
                grad = (H @ V.T - Y).T @ H / n + ridge * V  # gradient of the objective
                V -= rate * dt * grad
            t = target
            found.append(V.copy())
        for got, want in zip(found, closed):
            assert _relative_error(got, want) < 1e-4

    def test_limits(self, small_features):
        """V(0) = V0 and V(inf) is the ridge-regression solution of the normal equations."""
        H, Y, V0 = small_features
        ridge, n, p = 0.5, H.shape[0], H.shape[1]
        V = theory.ridge_flow_weights(V0, H, Y, ridge, 1.0, [0.0, 1e9])
        ridge_solution = np.linalg.solve(H.T @ H + n * ridge * np.eye(p), H.T @ Y).T
        np.testing.assert_allclose(V[0], V0, rtol=1e-12)
        np.testing.assert_allclose(V[1], ridge_solution, rtol=1e-9, atol=1e-12)

    def test_s_rel_matches_explicit_update(self, small_features):
        """Closed-form S_rel equals the ratio of output changes after a small explicit step."""
        H, Y, V0 = small_features
        ridge, eta = 0.5, 1e-6
        V_t = theory.ridge_flow_weights(V0, H, Y, ridge, 0.05, [0.0, 2.0, 20.0, 200.0])
        idx_x, idx_xp = np.array([0, 3, 17, 22]), np.array([1, 8, 15, 29])
        closed = theory.s_rel_ridge_features(V_t, H[idx_x], Y[idx_x], H[idx_xp], ridge)
        for t, V in enumerate(V_t):
            for a, i in enumerate(idx_x):
                weights = torch.tensor(V, requires_grad=True)
                h = torch.tensor(H[i])
                loss = 0.5 * torch.sum((weights @ h - torch.tensor(Y[i])) ** 2)
                loss = loss + 0.5 * ridge * torch.sum(weights**2)
                (g,) = torch.autograd.grad(loss, weights)
                stepped = V - eta * g.numpy()
                change = np.linalg.norm((stepped - V) @ H[idx_xp].T, axis=0)  # (m',)
                own = np.linalg.norm((stepped - V) @ H[i])
                np.testing.assert_allclose(closed[t, a], change / own, rtol=1e-4)

    def test_run_and_plot(self):
        result = theory.run_random_features(
            n_features=(4,), n_per_class=30, dim=5, n_runs=2, n_pairs=3,
            times=np.geomspace(1.0, 1e4, 5),
        )
        out = result[4]["inter"]
        assert out["loss"].shape == out["s_rel_01"].shape == (2, 5)
        assert np.all(np.isfinite(out["s_rel_10"])) and np.all(out["s_rel_01"] > 0)
        fig = theory.plot_random_features(result)
        assert len(fig.axes) == 3  # loss, S_rel, S_rel relative to t = 0

    def test_bad_input(self):
        with pytest.raises(ValueError, match="pair kind"):
            theory.run_random_features(pair_kinds=("across",))
        with pytest.raises(ValueError, match="sorted"):
            theory.ridge_flow_weights(np.zeros((2, 3)), np.ones((4, 3)), np.ones((4, 2)),
                                      1.0, 1.0, [2.0, 1.0])


# ----------------------------------------------------------------------------------------------
# a single ReLU gate


def _simulate_relu_gate(w0, X, y, checkpoints, dt):
    """Explicit-Euler gradient descent on 1/(2n) sum (ReLU(w.x) - y)^2; weights at checkpoints."""
    w, t, found = np.array(w0, dtype=float), 0.0, []
    n = X.shape[0]
    for target in checkpoints:
        for _ in range(int(round((target - t) / dt))):
            margins = X @ w
            w -= dt * X.T @ ((np.maximum(margins, 0.0) - y) * (margins > 0)) / n
        t = target
        found.append(w.copy())
    return np.array(found)


@pytest.fixture(scope="module")
def gate_problem():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((40, 4))
    teacher = np.array([1.0, 0.5, 0.0, -0.5])
    return X, np.maximum(X @ teacher, 0.0)


class TestReluGate:
    @pytest.mark.parametrize("w0", [[0.3, -0.6, 0.2, 0.1], [-0.5, 0.1, 0.4, 0.6]])
    def test_matches_tiny_step_gradient_descent(self, gate_problem, w0):
        """Piecewise closed-form w(t) equals tiny-step gradient descent to 1e-3 relative."""
        X, y = gate_problem
        checkpoints = np.array([0.5, 2.0, 6.0, 15.0])
        flow = theory.relu_gate_flow(w0, X, y, checkpoints)
        assert len(flow["switch_times"]) > 0  # the setting does exercise activation switches
        simulated = _simulate_relu_gate(w0, X, y, checkpoints, dt=2e-4)
        for got, want in zip(simulated, flow["weights"]):
            assert _relative_error(got, want) < 1e-3

    def test_s_rel_matches_explicit_step(self, gate_problem):
        """S_rel formula at the closed-form w(t) equals an explicit small step at simulated w."""
        X, y = gate_problem
        w0 = [0.3, -0.6, 0.2, 0.1]
        checkpoints = np.array([1.0, 4.0, 15.0])
        closed = theory.relu_gate_flow(w0, X, y, checkpoints)["weights"]
        simulated = _simulate_relu_gate(w0, X, y, checkpoints, dt=2e-4)
        rng = np.random.default_rng(8)
        probes = rng.standard_normal((12, 4))
        s_closed = theory.relu_gate_s_rel(closed, probes, probes)  # (T, 12, 12)
        eta = 1e-7
        for t, w in enumerate(simulated):
            margins = probes @ w
            clear = np.abs(margins) > 1e-2  # keep pairs whose activation is unambiguous
            for i in np.flatnonzero(clear & (margins > 0)):
                wt = torch.tensor(w, requires_grad=True)
                x_i = torch.tensor(probes[i])
                loss = 0.5 * (torch.relu(wt @ x_i) - 3.0) ** 2  # any target with r != 0
                (g,) = torch.autograd.grad(loss, wt)
                stepped = w - eta * g.numpy()
                change = np.abs(np.maximum(probes @ stepped, 0) - np.maximum(margins, 0))
                explicit = change / change[i]
                np.testing.assert_allclose(s_closed[t, i, clear], explicit[clear],
                                           rtol=1e-3, atol=1e-9)
            assert np.all(np.isnan(s_closed[t, clear & (margins < 0)]))

    def test_no_active_input_stays_put(self, gate_problem):
        """w = 0 activates no input (ReLU'(0) = 0), so the gate never moves."""
        X, y = gate_problem
        w0 = np.zeros(4)
        flow = theory.relu_gate_flow(w0, X, y, [0.0, 10.0])
        np.testing.assert_array_equal(flow["weights"], np.zeros((2, 4)))

    def test_rejects_negative_targets(self, gate_problem):
        X, y = gate_problem
        with pytest.raises(ValueError, match="y >= 0"):
            theory.relu_gate_flow(np.ones(4), X, y - 1.0, [1.0])

    def test_run_and_plot(self):
        result = theory.run_relu_gate(dim=3, n_train=30, init_angles_deg=(60.0, 150.0),
                                      n_pairs=4, times=np.geomspace(0.1, 50, 7))
        out = result[150.0]
        assert out["loss"].shape == out["intra"].shape == (7,)
        assert out["loss"][-1] < out["loss"][0]
        assert len(theory.plot_relu_gate(result).axes) == 3


# ----------------------------------------------------------------------------------------------
# f(x) = <u^d, x> on an orthogonal design


@pytest.fixture(scope="module")
def homogeneous_problem():
    sigma = np.array([1.0, 0.8, 1.2, 0.7, 1.0, 0.9])
    X = theory.make_orthogonal_design(10, sigma, seed=5)  # (10, 6)
    beta_star = np.array([1.2, -0.7, 0.0, 0.9, 0.4, -1.1])
    residual = np.random.default_rng(6).standard_normal(10)
    residual -= X @ np.linalg.lstsq(X, residual, rcond=None)[0]  # orthogonal to the columns
    return X, sigma**2, beta_star, X @ beta_star + 0.3 * residual


class TestHomogeneous:
    def test_orthogonal_design(self, homogeneous_problem):
        X, sigma2, _, _ = homogeneous_problem
        np.testing.assert_allclose(X.T @ X / X.shape[0], np.diag(sigma2), atol=1e-12)

    @pytest.mark.parametrize("degree", [1, 2, 3, 4])
    def test_matches_tiny_step_gradient_descent(self, homogeneous_problem, degree):
        """u(t) equals tiny-step gradient descent on 1/(2n)||X u^d - y||^2 to 1e-3 relative."""
        X, sigma2, beta_star, y = homogeneous_problem
        u0 = np.array([0.5, 0.6, 0.7, -0.5, 0.9, -0.6])
        checkpoints = np.array([0.3, 1.5, 6.0])
        closed = theory.homogeneous_flow(u0, sigma2, beta_star, degree, checkpoints)
        u, t, dt, n = u0.copy(), 0.0, 5e-5, X.shape[0]
        for target, want in zip(checkpoints, closed):
            for _ in range(int(round((target - t) / dt))):
                u -= dt * degree * u ** (degree - 1) * (X.T @ (X @ u**degree - y)) / n
            t = target
            np.testing.assert_allclose(u, want, rtol=1e-3, atol=1e-6)
            assert _relative_error(u, want) < 1e-3
            # S_rel from an explicit small step on one example at the simulated weights
            x, x_prime, eta = X[0], X[1:], 1e-7
            g = degree * u ** (degree - 1) * x * (x @ u**degree - y[0])
            stepped = u - eta * g
            change = np.abs(X @ stepped**degree - X @ u**degree)
            formula = theory.homogeneous_s_rel(want[None], degree, x[None], x_prime)[0, 0]
            np.testing.assert_allclose(formula, change[1:] / change[0], rtol=1e-3)

    def test_high_degree_large_times(self):
        """d = 5 from a tiny init reaches beta* (b > 0), and decays toward 0 for b < 0 (odd d)."""
        u = theory.homogeneous_flow([0.05, 0.05], [1.0, 1.0], [2.0, -1.0], 5, [0.0, 1e9])
        np.testing.assert_allclose(u[-1, 0], 2.0 ** 0.2, rtol=1e-12)
        assert 0 < u[-1, 1] < 1e-2

    def test_s_rel_of_linear_model_is_constant(self):
        rng = np.random.default_rng(0)
        U = rng.standard_normal((5, 4))
        x, xp = rng.standard_normal((3, 4)), rng.standard_normal((2, 4))
        s = theory.homogeneous_s_rel(U, 1, x, xp)
        np.testing.assert_allclose(s, np.broadcast_to(np.abs(x @ xp.T) / (x**2).sum(1)[:, None],
                                                      s.shape))

    def test_run_and_plot(self):
        result = theory.run_homogeneous(dim=6, n_relevant=2, degrees=(1, 2), init_scales=(0.1,),
                                        n_pairs=3, times=np.geomspace(0.01, 100, 6))
        assert result[(2, 0.1)]["intra"].shape == (6,)
        assert np.ptp(result[(1, 0.1)]["intra"]) < 1e-12  # linear model: S_rel frozen
        assert len(theory.plot_homogeneous(result).axes) == 2

    def test_bad_degree(self):
        with pytest.raises(ValueError, match="degree"):
            theory.homogeneous_flow([1.0], [1.0], [1.0], 1.5, [1.0])
