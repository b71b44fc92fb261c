"""Wall time of one S_rel measurement: the batched implementation against the published per-model
loop and against the compute floor, in the paper's setting.

Setting (Dan, Mukherjee, Das, Gampa, arXiv 2111.01166): ResNet-18 without normalization layers,
32x32 inputs, 3 classes x k = 20 reference points, one Adam step of lr 1e-4 per sampled point,
output change measured as KL and as the Euclidean distance of He & Su (ICLR 2020).

  (a) `srel.elasticity.compute_output_changes` over all sampled points, both definitions;
  (b) the published algorithm, written here from its description: for every ordered class pair
      (num, den) and every sampled point of class den, a new ResNet-18 loads the weights, takes one
      step of a fresh torch.optim.Adam on that point's cross-entropy and evaluates the num class;
  (c) the compute floor: as many image forwards as (a) with one weight set at the same batch size,
      plus one forward/backward over all sampled points as a single batch.

(a) and (b) are checked to give the same S_rel in float64 before their times are compared.

Usage:
    python benchmarks/bench_s_rel.py                   # the table on this machine
    python benchmarks/bench_s_rel.py --device cuda
    python benchmarks/bench_s_rel.py --quick           # tiny sizes, seconds (a smoke test)
    python benchmarks/bench_s_rel.py --cifar100-full   # the full CIFAR-100 experiment, timed
"""
import argparse
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from srel.data import DATASETS, ClassSubset, load_class_subset, normalize_images
from srel.elasticity import compute_output_changes
from srel.models import make_resnet18, pick_device
from srel.training import ExperimentConfig, run_experiment

DEFINITIONS = ("kl", "suhe")
LR = 1e-4  # step of the one Adam update
CHECK_RTOL = 1e-5  # (a) against (b), both float64


# ----------------------------------------------------------------------------------------------
# timing and memory


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_and_peak(fn, device: torch.device) -> tuple:
    """Wall time of one call of fn (after the device has finished queued work) and the peak
    memory during it (MiB; process-wide so far where a peak cannot be reset)."""
    reset_peak_memory(device)
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start, peak_memory_mib(device)


def load_average() -> float:
    """1-minute load average of the machine (NaN where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak; False where only the process-wide peak can be read."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    # NOTE: Linux resets the peak RSS that getrusage reports when "5" is written to clear_refs.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


# ----------------------------------------------------------------------------------------------
# reference set


def make_reference_set(data: str, n_classes: int, k: int, device, seed: int = 0) -> tuple:
    """k normalised 32x32 images per class, grouped by class: (n, 3, 32, 32) and (n,) labels."""
    if data == "random":
        generator = torch.Generator().manual_seed(seed)
        inputs = torch.randn(n_classes * k, 3, 32, 32, generator=generator)
    else:
        subset = load_class_subset("digits", list(range(n_classes)))
        idx = np.concatenate(
            [np.flatnonzero(subset.train_labels.numpy() == c)[:k] for c in range(n_classes)]
        )
        inputs = normalize_images(subset.train_images[idx])
    targets = torch.arange(n_classes).repeat_interleave(k)
    return inputs.to(device), targets.to(device)


def make_model(n_classes: int, device, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return make_resnet18(n_classes).to(device).eval()


# ----------------------------------------------------------------------------------------------
# (a) the batched measurement, (b) the published loop, (c) the floor


def batched_changes(model, inputs, targets, rows=None, dtype=None) -> dict:
    return compute_output_changes(
        model, inputs, targets, rows, DEFINITIONS, update="adam", lr=LR, dtype=dtype
    )


def textbook_change(logits_before, logits_after, definition: str) -> torch.Tensor:
    """KL(p || q) = sum p (log p - log q), or ||q - p||_2, per row."""
    p, q = logits_before.softmax(-1), logits_after.softmax(-1)
    if definition == "kl":
        return (p * (p.log() - q.log())).sum(-1)
    return (q - p).norm(dim=-1)


def published_s_rel(model, inputs, targets, pairs, points, n_classes: int) -> dict:
    """The per-model loop: {(num, den): {definition: (len(points), k) S_rel}}.

    For each pair and each of the `points` (positions within class den), a new model loads the
    weights and a fresh Adam takes one step on that point alone; the num class and the point itself
    (the denominator) are then evaluated. Runs in the dtype and on the device of `model`.
    """
    param = next(model.parameters())
    state = model.state_dict()
    with torch.no_grad():
        before = model(inputs)  # (n, C)
    found = {}
    for num, den in pairs:
        num_idx = torch.nonzero(targets == num).flatten()
        den_idx = torch.nonzero(targets == den).flatten()[list(points)]
        s_rel = {d: torch.empty(len(den_idx), len(num_idx), dtype=param.dtype) for d in DEFINITIONS}
        for r, i in enumerate(den_idx.tolist()):
            fresh = make_resnet18(n_classes).to(device=param.device, dtype=param.dtype)
            fresh.load_state_dict(state)
            optimizer = torch.optim.Adam(fresh.parameters(), lr=LR)
            optimizer.zero_grad()
            F.cross_entropy(fresh(inputs[i : i + 1]), targets[i : i + 1]).backward()
            optimizer.step()
            seen = torch.cat([num_idx, torch.tensor([i], device=num_idx.device)])
            with torch.no_grad():
                after = fresh(inputs[seen])  # (k + 1, C)
            for d in DEFINITIONS:
                change = textbook_change(before[seen], after, d)
                s_rel[d][r] = (change[:-1] / change[-1]).cpu()
        found[num, den] = s_rel
    return found


def floor_calls(model, inputs, targets, n_rows: int) -> tuple:
    """(forwards, forward_backward): n_rows forwards of the whole reference set with one weight
    set, and one forward/backward over the n_rows sampled points as a single batch."""
    params = list(model.parameters())

    def forwards():
        with torch.no_grad():
            for _ in range(n_rows):
                model(inputs)

    def forward_backward():
        loss = F.cross_entropy(model(inputs[:n_rows]), targets[:n_rows])
        torch.autograd.grad(loss, params)

    return forwards, forward_backward


# ----------------------------------------------------------------------------------------------
# equality of (a) and (b)


def check_equal(model, inputs, targets, n_classes: int, k: int, n_points: int) -> float:
    """Largest relative difference of S_rel between (a) and (b) in float64, for den class 0, its
    first n_points sampled points and every num class."""
    model64 = make_resnet18(n_classes).to(inputs.device, torch.float64).eval()
    model64.load_state_dict(model.state_dict())
    inputs64 = inputs.double()
    points = range(n_points)
    changes = batched_changes(model64, inputs64, targets, rows=list(points))
    reference = published_s_rel(
        model64, inputs64, targets, [(num, 0) for num in range(n_classes)], points, n_classes
    )
    worst = 0.0
    for (num, den), s_rel in reference.items():
        for d in DEFINITIONS:
            c = changes[d]  # (n_points, n); row r updated on point r of class 0
            ours = c[:, num * k : (num + 1) * k] / c[range(n_points), list(points)][:, None]
            worst = max(worst, ((ours - s_rel[d]).abs() / s_rel[d].abs()).max().item())
    return worst


# ----------------------------------------------------------------------------------------------
# the runs


def benchmark(args, device: torch.device) -> bool:
    C, k = args.classes, args.k
    n = C * k
    inputs, targets = make_reference_set(args.data, C, k, device)
    model = make_model(C, device)
    n_pairs = C * C
    timed_pairs = [(num, den) for den in range(C) for num in range(C)][: args.published_pairs]
    print(
        f"S_rel benchmark: ResNet-18 without normalization, {C} classes x k = {k} = {n} "
        f"reference points ({args.data} 32x32), one Adam step lr {LR}, definitions "
        f"{'+'.join(DEFINITIONS)}; device {device}"
        + (f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else "")
    )
    load_start = load_average()

    # warm-up: allocator, kernels and the one-time compile of the update, timed apart
    t_first, _ = seconds_and_peak(lambda: batched_changes(model, inputs, targets, rows=[0]), device)
    forwards, forward_backward = floor_calls(model, inputs, targets, n)
    forward_backward()
    per_phase = reset_peak_memory(device)
    mem_start = peak_memory_mib(device)

    # (a) and (c), interleaved so that both see the same load; medians of the repeats
    calls = {
        "a": lambda: batched_changes(model, inputs, targets),
        "forwards": forwards,
        "forward_backward": forward_backward,
    }
    seconds = {key: [] for key in calls}
    peaks = {key: [] for key in calls}
    for _ in range(args.repeats):
        for key, fn in calls.items():
            t, peak = seconds_and_peak(fn, device)
            seconds[key].append(t)
            peaks[key].append(peak)
    t_a = statistics.median(seconds["a"])
    t_fwd = statistics.median(seconds["forwards"])
    t_fwd_bwd = statistics.median(seconds["forward_backward"])
    t_c = t_fwd + t_fwd_bwd
    mem_a = max(peaks["a"])
    mem_c = max(peaks["forwards"] + peaks["forward_backward"])

    # (b) published loop, a subset of pairs scaled to all of them
    t_b_part, mem_b = seconds_and_peak(
        lambda: published_s_rel(model, inputs, targets, timed_pairs, range(k), C), device
    )
    t_b = t_b_part * n_pairs / len(timed_pairs)

    rows = [
        (f"(a) batched: compute_output_changes, {n} rows x {n} points", t_a),
        (
            f"(b) published: new model per point, {len(timed_pairs)} of {n_pairs} pairs timed "
            f"({t_b_part:.2f} s) x {n_pairs / len(timed_pairs):.2f}",
            t_b,
        ),
        (
            f"(c) floor: {n} forwards of batch {n} ({t_fwd:.2f} s) + fwd/bwd of batch {n} "
            f"({t_fwd_bwd:.2f} s)",
            t_c,
        ),
        ("    first call of (a) in this process, 1 row (one-time warm-up included)", t_first),
    ]
    for label, value in rows:
        print(f"{label:<80}{value:8.2f} s")
    print(f"ratio b/a = {t_b / t_a:.1f}   (published loop / batched)")
    print(f"ratio a/c = {t_a / t_c:.2f}   (batched / floor)")
    memory = "peak GPU memory allocated" if device.type == "cuda" else "peak RSS"
    memory += " per phase" if per_phase else " of the process so far"
    print(
        f"{memory}: (a) {mem_a:.0f} MiB, (b) {mem_b:.0f} MiB, (c) {mem_c:.0f} MiB "
        f"(model and data loaded: {mem_start:.0f} MiB)"
    )
    print(
        f"load average (1 min) {load_start:.2f} at the start, {load_average():.2f} now, on "
        f"{os.cpu_count()} CPUs (other processes inflate every time above)"
    )

    # equality of (a) and (b)
    worst = check_equal(model, inputs, targets, C, k, args.check_points)
    ok = worst <= CHECK_RTOL
    print(
        f"check (a) == (b), float64, den class 0, {args.check_points} points x all num classes, "
        f"{'+'.join(DEFINITIONS)}: max relative difference {worst:.1e} "
        f"(rtol {CHECK_RTOL:g}) {'OK' if ok else 'FAILED'}"
    )

    # scaling of (a)
    print("scaling of (a):")
    print(f"{'classes':>8} {'k':>4} {'n':>5} {'time s':>8} {'us per image forward':>21}")
    for n_classes, k_scale in args.scaling:
        x, y = make_reference_set(args.data, n_classes, k_scale, device)
        net = make_model(n_classes, device)
        batched_changes(net, x, y, rows=[0])  # warm-up at this size
        t, _ = seconds_and_peak(lambda: batched_changes(net, x, y), device)
        n_scale = n_classes * k_scale
        print(f"{n_classes:>8} {k_scale:>4} {n_scale:>5} {t:>8.2f} {1e6 * t / n_scale**2:>21.1f}")
    return ok


def cifar100_full(args, device: torch.device) -> None:
    """The paper's CIFAR-100 configuration on random images of the same size (CIFAR-100 itself
    is not needed to time it): 3 runs x 7 epochs, batch 25, 500 train / 100 test per class,
    S_rel every 9 batches (49 measurements per run)."""
    spec = DATASETS["cifar100"]
    C = len(spec.default_classes)
    generator = torch.Generator().manual_seed(0)

    def images(per_class):
        shape = (C * per_class, 3, 32, 32)
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)

    def labels(per_class):
        return torch.arange(C).repeat_interleave(per_class)

    subset = ClassSubset(
        "cifar100",
        spec.default_classes,
        images(spec.train_per_class),
        labels(spec.train_per_class),
        images(spec.test_per_class),
        labels(spec.test_per_class),
        source="random uint8 images of CIFAR-100's size",
    )
    config = ExperimentConfig(
        dataset="cifar100", runs=3, epochs=7, batch_size=25, definitions=DEFINITIONS,
        device=str(device),
    )
    print(
        f"CIFAR-100 full configuration on synthetic images: {config.runs} runs x {config.epochs} "
        f"epochs, batch {config.batch_size}, {spec.train_per_class}/{spec.test_per_class} per "
        f"class, k = {config.k}, {'+'.join(DEFINITIONS)}, device {device}"
    )
    start = time.perf_counter()
    result = run_experiment(config, subset=subset, verbose=args.verbose)
    total = time.perf_counter() - start
    n_measurements = len(result.measure_epochs)
    print(f"measurements per run: {n_measurements}")
    print(
        f"wall time {total:.0f} s ({total / 60:.1f} min); S_rel measurement "
        f"{result.seconds['measurement']:.0f} s "
        f"({result.seconds['measurement'] / (config.runs * n_measurements):.2f} s each)"
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--data", choices=("random", "digits"), default="random")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--k", type=int, default=20, help="reference points per class")
    parser.add_argument("--repeats", type=int, default=3, help="median of this many for (a), (c)")
    parser.add_argument(
        "--published-pairs", type=int, default=2, help="class pairs (b) is timed on, then scaled"
    )
    parser.add_argument("--check-points", type=int, default=2, help="points of the float64 check")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--cifar100-full", action="store_true", help="time the full experiment")
    parser.add_argument("--verbose", action="store_true", help="epoch lines in --cifar100-full")
    args = parser.parse_args(argv)
    args.scaling = [(3, 10), (3, 20), (3, 40), (10, 20)]  # (classes, k)
    if args.quick:
        args.classes, args.k, args.repeats, args.published_pairs = 3, 2, 1, 1
        args.check_points = 1
        args.scaling = [(3, 1), (3, 2), (4, 2)]
    if min(args.classes - 1, args.k, args.repeats, args.published_pairs, args.check_points) < 1:
        parser.error(
            "--classes must be >= 2; --k, --repeats, --published-pairs, --check-points >= 1"
        )
    if args.published_pairs > args.classes**2 or args.check_points > args.k:
        parser.error("--published-pairs must be <= classes^2 and --check-points <= k")
    if args.data == "digits" and (args.classes > 10 or args.k > DATASETS["digits"].train_per_class):
        parser.error(
            f"digits has 10 classes of {DATASETS['digits'].train_per_class} training images; "
            "lower --classes or --k"
        )
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.cifar100_full:
        cifar100_full(args, device)
        return 0
    return 0 if benchmark(args, device) else 1


if __name__ == "__main__":
    sys.exit(main())
