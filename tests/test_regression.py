"""S_rel in neural regression: kernel form vs explicit step, training history, phase detection."""
import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

from srel import regression

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def small_problem():
    inputs, targets = regression.make_teacher_regression(10, 3, teacher_width=2, seed=1)
    model = regression.make_mlp(3, width=8, depth=2, init_scale=1.0, seed=2).double()
    return model, inputs.double(), targets.double()


class TestSRel:
    def test_per_sample_grads_match_autograd_loop(self, small_problem):
        model, inputs, _ = small_problem
        G = regression.compute_per_sample_grads(model, inputs)
        for i in range(inputs.shape[0]):
            model.zero_grad()
            model(inputs[i:i + 1]).sum().backward()
            expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
            torch.testing.assert_close(G[i], expected, rtol=1e-12, atol=1e-12)

    def test_kernel_form_equals_explicit_small_step(self, small_problem):
        """|K(x, x')| / K(x, x) equals the ratio of output changes after a small SGD step."""
        model, inputs, targets = small_problem
        kernel = regression.compute_s_rel(model, inputs)
        explicit = regression.compute_s_rel_explicit(model, inputs, targets, lr=1e-6)
        torch.testing.assert_close(explicit, kernel, rtol=1e-4, atol=1e-8)

    def test_explicit_step_is_first_order(self, small_problem):
        """The explicit form's gap to the kernel form shrinks ~linearly with the step."""
        model, inputs, targets = small_problem
        kernel = regression.compute_s_rel(model, inputs)
        gaps = [(regression.compute_s_rel_explicit(model, inputs, targets, lr) - kernel).abs().max()
                for lr in (1e-3, 1e-4)]
        assert 5 < gaps[0] / gaps[1] < 20

    def test_properties(self, small_problem):
        model, inputs, _ = small_problem
        s_rel = regression.compute_s_rel(model, inputs)
        torch.testing.assert_close(s_rel.diagonal(), torch.ones(10, dtype=torch.float64))
        assert (s_rel >= 0).all()
        assert regression.off_diagonal(s_rel).shape == (90,)

    def test_linear_model_closed_form(self):
        """For f = w . x + b the kernel is x . x' + 1, whatever the weights."""
        model = regression.make_linear_model(4, seed=0).double()
        x = torch.randn(6, 4, dtype=torch.float64)
        K = x @ x.T + 1
        expected = K.abs() / K.diagonal()[:, None]
        torch.testing.assert_close(regression.compute_s_rel(model, x), expected)

    def test_rejects_vector_output(self):
        with pytest.raises(ValueError, match="scalar-output"):
            regression.compute_s_rel(nn.Linear(3, 2), torch.randn(4, 3))


class TestPhaseSwitch:
    def test_hand_computed_switch(self):
        """Rates 0.05, 0.04, 0.0067, 0, 0, 0, ...: the first calm window starts at index 3."""
        steps = np.arange(0, 100, 10)
        values = np.array([1.0, 0.5, 0.3, 0.28] + [0.28] * 6)
        found = regression.detect_phase_switch(steps, values, threshold=1e-3, window=3)
        assert found["index"] == 3 and found["step"] == 30
        np.testing.assert_allclose(found["rates"][:3], [0.05, 0.04, 0.02 / (0.3 * 10)])

    def test_window_must_be_consecutive(self):
        steps = np.arange(8)
        values = np.array([1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0])  # calm, jump, calm
        assert regression.detect_phase_switch(steps, values, 1e-3, window=2)["index"] == 2

    def test_no_switch(self):
        steps = np.arange(5)
        found = regression.detect_phase_switch(steps, 2.0 ** steps, threshold=0.1, window=2)
        assert found["index"] is None and found["step"] is None

    def test_bad_input(self):
        with pytest.raises(ValueError, match="increasing"):
            regression.detect_phase_switch([0, 2, 1], [1, 1, 1])
        with pytest.raises(ValueError, match="threshold"):
            regression.detect_phase_switch([0, 1], [1, 1], threshold=0)


class TestTraining:
    def test_history(self):
        inputs, targets = regression.make_teacher_regression(32, 3, seed=0)
        model = regression.make_mlp(3, width=16, depth=1, seed=0)
        hist = regression.train_tracking_s_rel(model, inputs, targets, inputs[:6], lr=0.05,
                                               n_steps=40, eval_every=10)
        np.testing.assert_array_equal(hist["steps"], regression.eval_schedule(40, 10))
        assert hist["loss"][-1] < hist["loss"][0]
        assert np.all(hist["q25"] <= hist["median"]) and np.all(hist["median"] <= hist["q75"])

    def test_linear_model_s_rel_is_constant(self):
        inputs, targets = regression.make_teacher_regression(32, 3, seed=0)
        model = regression.make_linear_model(3, seed=0)
        hist = regression.train_tracking_s_rel(model, inputs, targets, inputs[:6], lr=0.1,
                                               n_steps=20, eval_every=5)
        assert np.ptp(hist["median"]) == 0
        assert hist["loss"][-1] < hist["loss"][0]

    def test_run_summary_and_plot(self):
        result = regression.run_regression_phases(
            dim=3, n_train=32, n_probe=5, width=8, n_steps=30, eval_every=5, seeds=(0, 1),
            threshold=1.0, window=2,
        )
        assert [r["seed"] for r in result["runs"]] == [0, 1]
        summary = regression.summarize_regression_phases(result)
        assert summary["n_switches_found"] == 2  # threshold 1/step: calm from the first window
        assert summary["linear_median_start"] == summary["linear_median_end"]
        assert len(regression.plot_regression_phases(result).axes) == 2

    def test_bad_probe_count(self):
        with pytest.raises(ValueError, match="n_probe"):
            regression.run_regression_phases(n_train=10, n_probe=20)
