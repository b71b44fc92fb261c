"""S_rel measurement: hand-derived values, equivalence with a naive loop, precision."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from srel import elasticity
from srel.elasticity import (
    compute_output_changes,
    measure_s_rel,
    output_change,
    pair_order,
    select_reference_points,
    summarize_s_rel,
)
from srel.models import make_resnet18


def small_cnn(n_classes=3):
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, n_classes),
    )


def naive_changes(model, inputs, targets, definition, update, lr):
    """Reference: deep-copy the model, take one real optimizer step on one example, evaluate."""
    n = len(inputs)
    out = torch.empty(n, n, dtype=torch.float64)
    with torch.no_grad():
        before = model(inputs)
    for i in range(n):
        m = copy.deepcopy(model)
        if update == "adam":
            opt = torch.optim.Adam(m.parameters(), lr=lr, weight_decay=0)
        else:
            opt = torch.optim.SGD(m.parameters(), lr=lr)
        opt.zero_grad()
        nn.functional.cross_entropy(m(inputs[i : i + 1]), targets[i : i + 1]).backward()
        opt.step()
        with torch.no_grad():
            after = m(inputs)
        p, q = before.softmax(-1), after.softmax(-1)
        if definition == "kl":
            out[i] = (p * (p.log() - q.log())).sum(-1)
        elif definition == "suhe":
            out[i] = (q - p).norm(dim=-1)
        else:
            out[i] = nn.functional.kl_div(q, p, reduction="none").mean(-1)
    return out


class TestLinearSoftmaxClosedForm:
    def test_sgd_linear_model_matches_hand_derivation(self):
        """logits = W x + b; one SGD step on (x, y) moves the logits at x' by
        -lr * (p(x) - e_y) * (x.x' + 1); S_rel follows from the two softmax outputs."""
        rng = np.random.default_rng(0)
        n, dim, n_classes, lr = 6, 5, 3, 0.5
        X = rng.normal(size=(n, dim))
        y = np.array([0, 1, 2, 0, 1, 2])
        W = rng.normal(size=(n_classes, dim))
        b = rng.normal(size=n_classes)

        def softmax(z):
            e = np.exp(z - z.max(-1, keepdims=True))
            return e / e.sum(-1, keepdims=True)

        Z = X @ W.T + b
        P = softmax(Z)
        expected = {"kl": np.empty((n, n)), "suhe": np.empty((n, n))}
        for i in range(n):
            residual = P[i] - np.eye(n_classes)[y[i]]
            Q = softmax(Z - lr * np.outer(X @ X[i] + 1.0, residual))
            expected["kl"][i] = (P * (np.log(P) - np.log(Q))).sum(-1)
            expected["suhe"][i] = np.linalg.norm(Q - P, axis=-1)

        model = nn.Linear(dim, n_classes).double()
        with torch.no_grad():
            model.weight.copy_(torch.from_numpy(W))
            model.bias.copy_(torch.from_numpy(b))
        changes = compute_output_changes(
            model, torch.from_numpy(X), torch.from_numpy(y), definitions=("kl", "suhe"),
            update="sgd", lr=lr,
        )
        for d in ("kl", "suhe"):
            np.testing.assert_allclose(changes[d].numpy(), expected[d], rtol=1e-10)
            s = summarize_s_rel(changes[d], y, n_classes, d, include_self=True)
            ratio = expected[d] / np.diag(expected[d])[:, None]
            # class 0 holds points 0 and 3; den class 0, num class 1 is x in {0, 3}, x' in {1, 4}
            np.testing.assert_allclose(s.pair_values[0, 1], ratio[np.ix_([0, 3], [1, 4])], rtol=1e-10)
            np.testing.assert_allclose(s.class_means[2, 2], ratio[np.ix_([2, 5], [2, 5])].mean())


class TestNaiveLoopEquivalence:
    @pytest.mark.parametrize("update", ["adam", "sgd"])
    def test_batched_equals_deepcopy_loop(self, update):
        """All three forms, float64, against real torch optimizers on deep copies."""
        torch.manual_seed(0)
        model = small_cnn().double()
        x = torch.randn(9, 3, 8, 8, dtype=torch.float64)
        y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
        lr = 1e-3 if update == "adam" else 0.1
        changes = compute_output_changes(
            model, x, y, definitions=elasticity.DEFINITIONS, update=update, lr=lr
        )
        for d in elasticity.DEFINITIONS:
            ref = naive_changes(model, x, y, d, update, lr)
            np.testing.assert_allclose(changes[d].numpy(), ref.numpy(), rtol=1e-5, atol=1e-300)

    def test_batch1_fallback_equals_deepcopy_loop(self):
        """Models outside plain Conv2d/Linear (here a LayerNorm) take the batch-1 gradient
        path; it must agree with the naive loop too."""
        torch.manual_seed(3)
        model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.LayerNorm(8), nn.Tanh(),
                              nn.Linear(8, 3)).double()
        assert elasticity._gradient_layers(model, [n for n, _ in model.named_parameters()]) == {}
        x = torch.randn(6, 3, 2, 2, dtype=torch.float64)
        y = torch.tensor([0, 0, 1, 1, 2, 2])
        changes = compute_output_changes(model, x, y, definitions=("kl", "suhe"), lr=1e-3)
        for d in ("kl", "suhe"):
            ref = naive_changes(model, x, y, d, "adam", 1e-3)
            np.testing.assert_allclose(changes[d].numpy(), ref.numpy(), rtol=1e-5, atol=1e-300)

    def test_module_registered_twice_is_refused(self):
        shared = nn.Linear(12, 12)
        model = nn.Sequential(nn.Flatten(), shared, nn.Tanh(), shared, nn.Linear(12, 3))
        with pytest.raises(ValueError, match="registered again as '3'"):
            compute_output_changes(model, torch.randn(3, 3, 2, 2), torch.tensor([0, 1, 2]))
        assert all(type(p) is nn.Parameter and p.requires_grad for p in model.parameters())

    def test_rows_split_equals_full(self):
        """Slices of sampled points (as separate processes would take) gather to the full matrix."""
        torch.manual_seed(1)
        model = small_cnn()
        x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 0, 1, 1, 2, 2])
        full = compute_output_changes(model, x, y)["kl"]
        parts = [compute_output_changes(model, x, y, rows=range(r, 6, 2))["kl"] for r in (0, 1)]
        gathered = torch.empty_like(full)
        gathered[0::2], gathered[1::2] = parts
        torch.testing.assert_close(gathered, full, rtol=0, atol=0)

    def test_model_left_untouched(self):
        torch.manual_seed(2)
        model = small_cnn().train()
        before = copy.deepcopy(model.state_dict())
        params = list(model.parameters())
        compute_output_changes(model, torch.randn(3, 3, 8, 8), torch.tensor([0, 1, 2]))
        assert model.training
        after = list(model.parameters())
        assert all(a is b and type(a) is nn.Parameter and a.requires_grad for a, b in zip(after, params))
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k])


class TestOutputChange:
    def test_kl_of_identical_outputs_is_zero(self):
        z = torch.randn(4, 3) * 5
        assert torch.equal(output_change(z, z.clone(), "kl"), torch.zeros(4))
        assert torch.equal(output_change(z, z.clone(), "suhe"), torch.zeros(4))

    def test_kl_published_of_identical_outputs_is_not_zero(self):
        z = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64).log()
        value = output_change(z, z, "kl_published").item()
        hand = np.mean([p * (np.log(p) - p) for p in (0.7, 0.2, 0.1)])
        assert value == pytest.approx(hand, rel=1e-12)
        assert value == pytest.approx(-0.447, abs=1e-3)

    def test_small_changes_survive_float32(self):
        """A 1e-5 logit change: float32 matches float64 on the same inputs; the textbook
        sum p (log p - log q) in float32 is dominated by rounding."""
        torch.manual_seed(0)
        z0 = torch.randn(5, 3)
        z1 = z0 + 1e-5 * torch.randn(5, 3)
        for d in ("kl", "suhe"):
            exact = output_change(z0.double(), z1.double(), d)
            got = output_change(z0, z1, d).double()
            torch.testing.assert_close(got, exact, rtol=1e-4, atol=0)
        p, q = z0.softmax(-1), z1.softmax(-1)
        textbook = (p * (p.log() - q.log())).sum(-1).double()
        exact = output_change(z0.double(), z1.double(), "kl")
        assert ((textbook - exact).abs() / exact).max() > 0.1

    def test_large_changes_are_finite(self):
        z = torch.zeros(1, 3)
        kl = output_change(z, torch.tensor([[200.0, 0.0, 0.0]]), "kl")
        assert torch.isfinite(kl).all()
        # KL(uniform || softmax([200, 0, 0])) = -log 3 + (2/3) * 200 up to e^-200 terms
        assert kl.item() == pytest.approx(400 / 3 - np.log(3), rel=1e-5)


class TestSummarize:
    def test_floor_and_nonfinite_are_counted_and_excluded(self):
        changes = np.array(
            [
                [1.0, 2.0, 3.0, 4.0],
                [1.0, 0.0, 5.0, 6.0],  # denominator 0: row excluded
                [np.nan, 1.0, 2.0, 8.0],  # one non-finite ratio
                [1.0, 1.0, 1.0, 4.0],
            ]
        )
        s = summarize_s_rel(changes, [0, 0, 1, 1], 2, eps=1e-8)
        assert s.n_floored.tolist() == [[1, 2], [0, 0]]
        assert s.n_nonfinite.tolist() == [[0, 0], [1, 0]]
        assert s.class_means[0, 0] == pytest.approx(2.0)  # only S(0 -> 1) = 2/1
        assert s.class_means[0, 1] == pytest.approx(3.5)  # (3 + 4) / 1, row 1 excluded
        assert s.class_means[1, 0] == pytest.approx((1 / 2 + 0.25 + 0.25) / 3)
        assert s.class_means[1, 1] == pytest.approx((8 / 2 + 1 / 4) / 2)

    def test_all_excluded_gives_nan(self):
        s = summarize_s_rel(np.zeros((2, 2)), [0, 1], 2)
        assert np.isnan(s.class_means).all()
        assert s.n_floored.sum() == 2  # the two cross pairs; self pairs are never counted

    def test_unequal_class_counts_rejected(self):
        with pytest.raises(ValueError, match="same number of reference points"):
            summarize_s_rel(np.ones((3, 3)), [0, 0, 1], 2)


def test_pair_order_matches_published_layout():
    assert pair_order(3) == [(0, 0), (1, 0), (2, 0), (1, 1), (0, 1), (2, 1), (2, 2), (0, 2), (1, 2)]
    assert len(pair_order(5)) == 25 and len(set(pair_order(5))) == 25


def test_reference_points_per_class_and_seeded():
    targets = np.repeat([0, 1, 2], 30)
    idx = select_reference_points(targets, 5, 3, seed=7)
    assert np.array_equal(targets[idx], np.repeat([0, 1, 2], 5))
    assert np.array_equal(idx, select_reference_points(targets, 5, 3, seed=7))
    assert not np.array_equal(idx, select_reference_points(targets, 5, 3, seed=8))
    with pytest.raises(ValueError, match="has only 30"):
        select_reference_points(targets, 31, 3, seed=0)


class TestBadInput:
    def test_batchnorm_in_training_mode_is_refused(self):
        model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.LazyLinear(2))
        x, y = torch.randn(2, 3, 5, 5), torch.tensor([0, 1])
        model(x)
        with pytest.raises(ValueError, match="BatchNorm layer in training mode"):
            compute_output_changes(model, x, y)
        compute_output_changes(model.eval(), x, y)  # eval mode: fixed affine map, allowed

    def test_unknown_definition_and_update(self):
        model, x, y = nn.Linear(2, 2), torch.randn(2, 2), torch.tensor([0, 1])
        with pytest.raises(ValueError, match="Unknown S_rel definition"):
            compute_output_changes(model, x, y, definitions=("kld",))
        with pytest.raises(ValueError, match="Unknown update rule"):
            compute_output_changes(model, x, y, update="adamw")


@pytest.mark.slow
def test_float32_within_1e3_of_float64_on_paper_setting():
    """ResNet-18 without normalization, 3 classes x k = 20, Adam lr 1e-4: class-mean S_rel in
    float32 within 1e-3 relative of float64, at initialization and after some training.

    Float64 convolutions are ~45x slower on CPU, so two sampled points per class are updated
    (against all 60 reference points) instead of all 60.
    """
    torch.manual_seed(0)
    model = make_resnet18(3)
    x = torch.randn(60, 3, 32, 32)
    y = torch.arange(3).repeat_interleave(20)
    rows = [0, 1, 20, 21, 40, 41]
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    for stage in ("init", "trained"):
        if stage == "trained":
            for _ in range(5):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
        kw = dict(rows=rows, definitions=("kl", "suhe"))
        c32 = compute_output_changes(model, x, y, **kw)
        c64 = compute_output_changes(model, x, y, dtype=torch.float64, **kw)
        for d in ("kl", "suhe"):
            means = []
            for changes in (c32[d].double(), c64[d]):
                s_rel = changes / changes[range(6), rows][:, None]  # (6, 60)
                s_rel[range(6), rows] = float("nan")  # self-pairs
                means.append(s_rel.view(3, 2, 3, 20).nanmean((1, 3)))  # (den, num)
            torch.testing.assert_close(means[0], means[1], rtol=1e-3, atol=0, msg=f"{d}, {stage}")
