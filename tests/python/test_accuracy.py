"""Training the digits CNN of examples/torch_ddp_digits.py on 4 processes (gloo), same
seed and epochs for every run: DGC at density 0.001 within 1.5 points of dense SGD,
OneBitAdam within 1 point of torch's Adam, L-GreCo within 1 point of dense SGD while
sending fewer bytes than its uniform default. One job runs every configuration in turn
(the process group is set up once). Baselines are read at the epoch count of the run
they are compared with: their data order and learning rate do not depend on the total,
so a 20-epoch run passes through exactly the state a 12-epoch run ends in. Training is deterministic (one thread per rank, gloo
sums in a fixed order), so the margins below are the same on every run of one build.

DGC and dense SGD are compared by their means over SEEDS: at 0.1% density one run's final
accuracy on the 360 test images moves by a point or more with the seed or with a change
of summation order (measured on torch 2.15, seeds 0, 1, 2: DGC minus dense -0.84, -1.39,
-0.56 points with one bucket layout and -1.67, +0.28, +0.56 with the next; on torch 1.13
with the second, -1.12, -0.55, -1.67), which is the size of the margin: one seed would
test the seed, not DGC."""

import dataclasses

import pytest

import torch_ddp_digits as digits
from ddp_harness import run_ranks

# DGC at 0.1% needs its warm-up and then enough steps. 1-bit Adam freezes after 20% of the
# steps (88 at 20 epochs) and runs at eps 1e-5, the C++ trainer's default: at 1e-8 an input
# that is almost always 0 leaves a tiny frozen v, and its update blows up after the freeze
# (docs/algorithms/onebit-adam.md). Whether that happens within 20 epochs at 1e-8 depends on
# the last bits of the warm-up: it did not with torch 1.13 and the old bucket layout, it
# did with torch 2.15, and with the one exchange engine's layout on torch 1.13. Adam
# runs at the same eps, so the two are compared like for like. L-GreCo needs neither.
LONG, SHORT = 20, 12
ADAM_EPS = 1e-5
SEEDS = (0, 1, 2)  # the runs of MEAN_OVER_SEEDS; the others run seed 0
MEAN_OVER_SEEDS = ("dense-sgd", "dgc-0.001")
RUNS = {  # name: (epochs, options)
    "dense-sgd": (LONG, dict(hook="allreduce")),
    "dgc-0.001": (LONG, dict(hook="dgc", density=0.001)),
    "adam": (LONG, dict(hook="allreduce", optimizer="adam", adam_eps=ADAM_EPS)),
    "onebit-adam": (LONG, dict(hook="onebit-adam", adam_eps=ADAM_EPS)),
    "lgreco-quant": (SHORT, dict(hook="lgreco", family="quant")),
    # The uniform default never re-plans: its bytes per step are the same every step.
    "uniform-quant": (1, dict(hook="lgreco-uniform", family="quant")),
}


def _train_all(rank, world):
    out = {}
    for name, (epochs, options) in RUNS.items():
        for seed in SEEDS if name in MEAN_OVER_SEEDS else SEEDS[:1]:
            result = digits.train(rank, world, digits.Config(epochs=epochs, seed=seed, **options))
            history = result["history"]
            if seed == SEEDS[0]:
                out[name] = {"accuracy": [h["accuracy"] for h in history],
                             "mean_bytes": sum(h["bytes_per_step"] for h in history) / len(history),
                             "last_bytes": history[-1]["bytes_per_step"],
                             "params": [], "final_by_seed": []}
            out[name]["params"].append(result["params"])
            out[name]["final_by_seed"].append(history[-1]["accuracy"])
    return out


@pytest.fixture(scope="module")
def runs():
    results = run_ranks(_train_all, 4, timeout=900)
    print("\ndigits CNN, 4 ranks (gloo), same seed:")
    for name, r in results[0].items():
        print(f"  {name:14s} {len(r['accuracy']):2d} epochs  test accuracy "
              f"{r['accuracy'][-1]:6.2f}% (dense SGD at that epoch "
              f"{results[0]['dense-sgd']['accuracy'][len(r['accuracy']) - 1]:6.2f}%)  "
              f"bytes/rank/step: mean {r['mean_bytes']:9.0f}, last epoch {r['last_bytes']:9.0f}")
    for name in MEAN_OVER_SEEDS:
        finals = results[0][name]["final_by_seed"]
        print(f"  {name:14s} seeds {SEEDS}: {', '.join(f'{a:.2f}' for a in finals)}  "
              f"mean {sum(finals) / len(finals):6.2f}%")
    return results[0], results


pytestmark = pytest.mark.accuracy


def _final(run, epochs=None):
    return run["accuracy"][(epochs or len(run["accuracy"])) - 1]


def test_every_rank_ends_with_the_same_parameters(runs):
    _, all_ranks = runs
    for name in RUNS:
        for r in range(1, 4):
            for mine, first in zip(all_ranks[r][name]["params"], all_ranks[0][name]["params"]):
                assert mine.equal(first), (name, r)


def test_dgc_within_1_5_points_of_dense(runs):
    rank0, _ = runs
    dense, dgc = rank0["dense-sgd"], rank0["dgc-0.001"]
    assert len(dense["accuracy"]) == len(dgc["accuracy"]) == LONG
    dgc_mean = sum(dgc["final_by_seed"]) / len(SEEDS)
    dense_mean = sum(dense["final_by_seed"]) / len(SEEDS)
    assert dgc_mean >= dense_mean - 1.5, (dgc["final_by_seed"], dense["final_by_seed"])
    # After the warm-up: 0.1% of each weight tensor, biases dense.
    assert dgc["last_bytes"] < dense["last_bytes"] / 50, (dgc["last_bytes"], dense["last_bytes"])


def test_onebit_adam_within_1_point_of_adam(runs):
    rank0, _ = runs
    adam, onebit = rank0["adam"], rank0["onebit-adam"]
    assert _final(onebit) >= _final(adam) - 1.0, (_final(onebit), _final(adam))
    assert onebit["last_bytes"] < adam["last_bytes"] / 16  # 1-bit momentum after the freeze


def test_lgreco_within_1_point_of_dense_with_fewer_bytes_than_uniform(runs):
    rank0, _ = runs
    dense, lgreco, uniform = (rank0[k] for k in ("dense-sgd", "lgreco-quant", "uniform-quant"))
    assert _final(lgreco) >= _final(dense, SHORT) - 1.0, (_final(lgreco), _final(dense, SHORT))
    assert lgreco["mean_bytes"] < uniform["mean_bytes"], (lgreco["mean_bytes"],
                                                         uniform["mean_bytes"])
