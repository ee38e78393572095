"""Issue 14's Python half: a careless user of the DDP hooks gets a clear gradcomm error on
every rank, naming the setting and both values (or the parameter and the ranks), within
seconds: never a hang, a crash or replicas that silently drift apart.

Every case runs real DDP over gloo on 2 ranks with the tiny model and asserts on every
rank: the gradcomm exception type, the words of its message, and the time from the first
step to the error. Cases that used to hang run under a short process-group timeout and a
job timeout, so a hang fails the test within seconds instead of stalling CI.

What reaches the user from loss.backward(): torch's reducer (1.13 at least) turns an
exception raised inside a comm hook into a plain RuntimeError whose text is the gradcomm
exception's type name, ": ", its message, and pybind11's "At:" traceback.
`_reached_user` reads the gradcomm type back from that text (or takes the exception itself
where a torch passes it through); test_hook_errors_reach_backward_as documents it."""

import math
import re
import time

import pytest
import torch
import torch.nn as nn

import gradcomm
import gradcomm.torch as gct
from ddp_harness import RankFailed, run_ranks
from models import batches, cpu_float16_matmul, tiny_net
from torch_ddp_digits import wrap_ddp

WORLD = 2
BOUND_S = 10.0  # every rank must have its error this soon after the first step starts
HANG_JOB_S = 30.0  # job timeout of the cases that used to hang (process group: 10 s)
TORCH_1 = torch.__version__.startswith("1.")


def _reached_user(error: BaseException):
    """(gradcomm exception type name, message, how it arrived) of what a user caught."""
    if isinstance(error, gradcomm.Error):
        return type(error).__name__, str(error), "itself"
    assert type(error) is RuntimeError, f"{type(error).__name__}: {error}"
    match = re.match(r"(\w+): (.*?)(?:\n\nAt:\n.*)?$", str(error), re.S)
    assert match, f"a RuntimeError that does not carry a gradcomm error: {error}"
    name = match.group(1)
    assert isinstance(getattr(gradcomm, name, None), type) and issubclass(
        getattr(gradcomm, name), gradcomm.Error), f"not a gradcomm type: {error}"
    return name, match.group(2), "RuntimeError text"


def _train(rank, make, steps=4, between=None, dtype=torch.float32):
    """Builds the DDP model and the hook (make(rank, net, model) -> (state, hook)), trains
    up to `steps` steps (between(rank, step, state, net) before each) and returns
    (gradcomm type, message, how, seconds, step) of the error, or None when there was none.
    Step -1: the error came from make() (construction, load_state_dict)."""
    net = tiny_net().to(dtype)
    model = wrap_ddp(net)  # torch 1.13's gloo cannot broadcast a bfloat16 model
    start, step = time.monotonic(), -1
    try:
        state, hook = make(rank, net, model)
        model.register_comm_hook(state, hook)
        opt = (state if isinstance(state, torch.optim.Optimizer)
               else torch.optim.SGD(model.parameters(), lr=0.05))
        for step, (x, y) in enumerate(batches(rank, steps)):
            if between is not None:
                between(rank, step, state, net)
            opt.zero_grad()
            nn.CrossEntropyLoss()(model(x.to(dtype)), y).backward()
            opt.step()
    except Exception as error:  # noqa: BLE001 - what the user would catch
        return (*_reached_user(error), time.monotonic() - start, step)
    return None


def _expect_on_every_rank(outcomes, type_name, *patterns, step=None):
    for rank, outcome in enumerate(outcomes):
        assert outcome is not None, f"rank {rank} went on without an error"
        name, message, _, seconds, at_step = outcome
        assert name == type_name, (rank, name, message)
        for pattern in patterns:
            assert re.search(pattern, message), (rank, pattern, message)
        assert seconds < BOUND_S, f"rank {rank} took {seconds:.1f} s"
        if step is not None:
            assert at_step == step, (rank, at_step, message)
    return outcomes


# ---- settings that differ between ranks: refused at the first step -------------------------
def _named(net):
    return list(net.named_parameters())


DISAGREEMENTS = {
    # case: (make(rank, net, model) -> (state, hook), the setting's name in the message,
    #        its values on ranks 0 and 1) - or (make, a pattern of the message, None).
    "dgc-density-0.1-vs-0.11": (
        lambda r, net, m: (gct.DGCState(density=(0.1, 0.11)[r], named_parameters=_named(net)),
                           gct.dgc_hook), "density", (0.1, 0.11)),
    "dgc-fp16": (lambda r, net, m: (gct.DGCState(fp16=r == 1), gct.dgc_hook),
                 "fp16", ("False", "True")),
    "dgc-warmup": (lambda r, net, m: (gct.DGCState(warmup=(gct.PAPER_WARMUP, None)[r]),
                                      gct.dgc_hook),
                   r"'warmup' is \[0\.25,0\.0625,.*\] on rank 0 and \[\] on rank 1", None),
    "dgc-momentum": (lambda r, net, m: (gct.DGCState(momentum=(0.9, 0.8)[r]), gct.dgc_hook),
                     "momentum", (0.9, 0.8)),
    "dgc-nonfinite": (lambda r, net, m: (gct.DGCState(nonfinite=("error", "skip_step")[r]),
                                         gct.dgc_hook), "nonfinite", ("error", "skip_step")),
    "dgc-bucket_bytes": (lambda r, net, m: (gct.DGCState(bucket_bytes=(4 << 20, 1 << 20)[r]),
                                            gct.dgc_hook), "bucket_bytes", (4 << 20, 1 << 20)),
    "dgc-seed": (lambda r, net, m: (gct.DGCState(seed=(5, 6)[r]), gct.dgc_hook), "seed", (5, 6)),
    "dgc-exchange": (lambda r, net, m: (gct.DGCState(exchange=("allgather", "reduce_scatter")[r]),
                                        gct.dgc_hook), "exchange", ("allgather", "reduce_scatter")),
    "dgc-selection": (lambda r, net, m: (gct.DGCState(selection=("sampled", "exact")[r]),
                                         gct.dgc_hook), "selection", ("sampled", "exact")),
    "dgc-steps_per_epoch": (lambda r, net, m: (gct.DGCState(steps_per_epoch=(0, 10)[r]),
                                               gct.dgc_hook), "steps_per_epoch", (0, 10)),
    "dgc-clip": (lambda r, net, m: (gct.DGCState(clip=(None, 1.5)[r]), gct.dgc_hook),
                 "clip", ("None", 1.5)),
    "quant-bits": (lambda r, net, m: (gct.QuantState(bits=(4, 3)[r]), gct.quant_hook),
                   "bits", (4, 3)),
    "quant-rounding": (lambda r, net, m: (gct.QuantState(rounding=("nearest", "stochastic")[r]),
                                          gct.quant_hook), "rounding", ("nearest", "stochastic")),
    "allreduce-fp16": (lambda r, net, m: (gct.AllreduceState(fp16=r == 1), gct.allreduce_hook),
                       "fp16", ("False", "True")),
    "lgreco-replan_every": (lambda r, net, m: (gct.LGreCoState(replan_every=(100, 50)[r]),
                                               gct.lgreco_hook), "replan_every", (100, 50)),
    "dgc-vs-quant": (lambda r, net, m: ((gct.DGCState(), gct.dgc_hook),
                                        (gct.QuantState(), gct.quant_hook))[r],
                     "hook", ("dgc", "quant")),
    "named_parameters-on-one-rank": (
        lambda r, net, m: (gct.DGCState(named_parameters=(None, _named(net))[r]), gct.dgc_hook),
        r"ranks disagree on layer 0 .*the names differ", None),
    "onebit-lr": (lambda r, net, m: (gct.OneBitAdam(m.parameters(), lr=(1e-3, 2e-3)[r]),
                                     gct.onebit_adam_hook), "lr", (1e-3, 2e-3)),
    "onebit-freeze_step": (lambda r, net, m: (gct.OneBitAdam(m.parameters(),
                                                             freeze_step=(10, 20)[r]),
                                              gct.onebit_adam_hook), "freeze_step", (10, 20)),
    "onebit-betas": (lambda r, net, m: (gct.OneBitAdam(m.parameters(),
                                                       betas=((0.9, 0.999), (0.8, 0.999))[r]),
                                        gct.onebit_adam_hook), "beta1", (0.9, 0.8)),
}


def _disagree(rank, world, case):
    return _train(rank, DISAGREEMENTS[case][0])


def _same_value(text: str, expected) -> bool:
    """A value as the message prints it: numbers at float32 or double precision."""
    if isinstance(expected, str):
        return text == expected
    try:
        return math.isclose(float(text), expected, rel_tol=1e-7, abs_tol=0.0)
    except ValueError:
        return False


@pytest.mark.parametrize("case", sorted(DISAGREEMENTS))
def test_settings_that_differ_between_ranks_fail_on_every_rank_naming_them(case):
    _, setting, values = DISAGREEMENTS[case]
    outcomes = run_ranks(_disagree, WORLD, case, timeout=HANG_JOB_S, pg_timeout=10)
    if values is None:
        _expect_on_every_rank(outcomes, "InvalidArgumentError", r"differ|disagree", setting,
                              step=0)
    else:
        _expect_on_every_rank(outcomes, "InvalidArgumentError", r"differ between ranks",
                              step=0)
        for rank, (_, message, *_) in enumerate(outcomes):
            named = re.search(rf"'{setting}' is (\S+) on rank 0 and (\S+) on rank 1", message)
            assert named, (rank, setting, message)
            assert all(_same_value(text, want) for text, want in zip(named.groups(), values)), (
                rank, values, message)


# ---- the schedules' position (set_epoch, load_state_dict) ---------------------------------
def _set_epoch_on_one_rank(rank, world, at_step):
    def between(r, step, state, net):
        if r == 1 and step == at_step:
            state.set_epoch(1)
    return _train(rank, lambda r, net, m: (gct.DGCState(named_parameters=_named(net)),
                                           gct.dgc_hook), between=between)


@pytest.mark.parametrize("at_step", [
    0,  # (before the zero-byte allgather fix this crashed both ranks with SIGFPE in gloo)
    2],
    ids=["before-the-first-step", "mid-run"])
def test_set_epoch_on_one_rank_fails_on_every_rank(at_step):
    """Every step's layout is agreed before its first collective (the first step's
    warm-up density differs: rank 1 is in epoch 1)."""
    outcomes = run_ranks(_set_epoch_on_one_rank, WORLD, at_step, timeout=HANG_JOB_S,
                         pg_timeout=5)
    _expect_on_every_rank(outcomes, "InvalidArgumentError", r"set_epoch",
                          rf"the ranks laid step {at_step} out differently",
                          rf"the ranks are at steps \[{at_step}, {at_step}\]",
                          r"ranks \[1\] laid their step out unlike rank 0", step=at_step)


def _load_on_one_rank(rank, world):
    saved = {}

    def between(r, step, state, net):
        if step == 1:
            saved["shard"] = state.state_dict()
        if step == 3 and r == 0:  # rank 0 goes back two steps, rank 1 does not
            state.load_state_dict(saved["shard"])
    return _train(rank, lambda r, net, m: (gct.DGCState(density=0.1, warmup=None,
                                                        named_parameters=_named(net)),
                                           gct.dgc_hook), steps=5, between=between)


def test_load_state_dict_on_one_rank_fails_on_every_rank():
    """Rank 0 goes back to step 1, rank 1 is at step 3: the layout agreement of the next
    step names both steps."""
    outcomes = run_ranks(_load_on_one_rank, WORLD, timeout=HANG_JOB_S, pg_timeout=5)
    _expect_on_every_rank(outcomes, "InvalidArgumentError", r"load_state_dict",
                          r"the ranks are at steps \[1, 3\]",
                          r"ranks \[1\] laid their step out unlike rank 0", step=3)


# ---- checked state ---------------------------------------------------------------------------
STATE_KINDS = {
    "dgc": lambda net: gct.DGCState(density=0.1, warmup=None, named_parameters=_named(net)),
    "quant": lambda net: gct.QuantState(bits=3, named_parameters=_named(net)),
    "lgreco": lambda net: gct.LGreCoState(family="quant", replan_every=2,
                                          named_parameters=_named(net)),
}
HOOK_OF = {"dgc": gct.dgc_hook, "quant": gct.quant_hook, "lgreco": gct.lgreco_hook}


def _flipped_bytes(rank, world, kind):
    net = tiny_net()
    model = nn.parallel.DistributedDataParallel(net)
    state = STATE_KINDS[kind](net)
    model.register_comm_hook(state, HOOK_OF[kind])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for x, y in batches(rank, 3):
        opt.zero_grad()
        nn.CrossEntropyLoss()(model(x), y).backward()
        opt.step()
    shard = state.state_dict()
    blob = shard["shard"]
    refused = []
    # The first, last and a spread of bytes between, each flipped in one bit, into the live
    # state and into a fresh one (which would apply it at its first backward).
    for at in sorted({0, len(blob) - 1, *range(1, len(blob), max(1, len(blob) // 23))}):
        damaged = bytearray(blob)
        damaged[at] ^= 1 << (at % 8)
        for target in (state, STATE_KINDS[kind](net)):
            start = time.monotonic()
            try:
                target.load_state_dict(dict(shard, shard=bytes(damaged)))
                refused.append((at, None, None, 0.0))
            except gradcomm.Error as error:
                refused.append((at, type(error).__name__, str(error), time.monotonic() - start))
    # The undamaged shard still loads, and training goes on.
    state.load_state_dict(shard)
    return refused


@pytest.mark.parametrize("kind", sorted(STATE_KINDS))
def test_a_state_dict_blob_with_one_byte_flipped_is_refused_by_its_checksum(kind):
    for rank, refused in enumerate(run_ranks(_flipped_bytes, WORLD, kind, timeout=60)):
        assert len(refused) > 40, len(refused)
        for at, name, message, seconds in refused:
            assert name == "Error", f"rank {rank}: byte {at} flipped was accepted"
            # The C++ checkpoint shard's own checks, naming the state and this rank: a
            # checksum (of the header or of the payload) for almost every byte; a flip in the
            # magic, the version or a checksum field itself is named as such.
            assert re.search(rf"checkpoint shard \w+\.load_state_dict on rank {rank}: ",
                             message), message
            assert seconds < 1.0
        checksums = sum("checksum mismatch" in message for _, _, message, _ in refused)
        assert checksums >= 0.8 * len(refused), [m for _, _, m, _ in refused]


def _onebit_flipped_byte(rank, world):
    net = tiny_net()
    model = nn.parallel.DistributedDataParallel(net)
    opt = gct.OneBitAdam(model.parameters(), freeze_step=2)
    model.register_comm_hook(opt, gct.onebit_adam_hook)
    for x, y in batches(rank, 3):  # through the freeze: errors in flight
        opt.zero_grad()
        nn.CrossEntropyLoss()(model(x), y).backward()
        opt.step()
    shard = opt.state_dict()
    blob = bytearray(shard["gradcomm"]["shard"])
    blob[len(blob) // 2] ^= 0x10
    try:
        opt.load_state_dict(dict(shard, gradcomm=dict(shard["gradcomm"], shard=bytes(blob))))
    except gradcomm.Error as error:
        return type(error).__name__, str(error)
    return None


def test_a_onebit_adam_state_with_one_byte_flipped_is_refused_by_its_checksum():
    for rank, outcome in enumerate(run_ranks(_onebit_flipped_byte, WORLD, timeout=60)):
        assert outcome is not None, f"rank {rank} accepted the damaged state"
        name, message = outcome
        assert name == "Error" and re.search(
            rf"checkpoint shard OneBitAdam\.load_state_dict on rank {rank}: payload checksum "
            r"mismatch", message), outcome


class _OtherNet(nn.Sequential):
    """tiny_net's layer names and count, with another hidden width."""

    def __init__(self):
        torch.manual_seed(0)
        super().__init__(nn.Linear(16, 48), nn.ReLU(), nn.Linear(48, 32), nn.LayerNorm(32),
                         nn.ReLU(), nn.Linear(32, 4))


def _another_shape(rank, world, named, on_ranks):
    """Loads the shard of a model with another hidden width (same layer names and count) on
    `on_ranks`, then trains: the error's step is -1 when load_state_dict refused it."""
    def state_for(net):
        return gct.DGCState(density=0.1, warmup=None,
                            named_parameters=_named(net) if named else None)

    other = _OtherNet()
    other_model = nn.parallel.DistributedDataParallel(other)
    other_state = state_for(other)
    other_model.register_comm_hook(other_state, gct.dgc_hook)
    x, y = next(batches(rank, 1))
    nn.CrossEntropyLoss()(other_model(x), y).backward()
    shard = other_state.state_dict()

    def make(r, net, model):
        state = state_for(net)
        if r in on_ranks:
            state.load_state_dict(shard)
        return state, gct.dgc_hook
    return _train(rank, make)


@pytest.mark.parametrize("named, layer, step", [
    # With named_parameters, load_state_dict itself refuses it (step -1) ...
    (True, r"layer 0: saved 0\.weight float32\[768\], here 0\.weight float32\[1024\]", -1),
    # ... without, the layers are known only once the first backward registered them.
    (False, r"layer 0: saved param0 float32\[768\], here param0 float32\[1024\]", 0)],
    ids=["named-at-load", "unnamed-at-first-step"])
def test_a_state_of_another_shape_is_refused_on_every_rank(named, layer, step):
    for rank, outcome in enumerate(run_ranks(_another_shape, WORLD, named, (0, 1),
                                             timeout=60)):
        _expect_on_every_rank([outcome], "InvalidArgumentError",
                              rf"load_state_dict on rank {rank}: the shard is of another model "
                              rf"\({layer}\)", step=step)


def test_a_state_of_another_shape_on_one_rank_without_named_parameters_fails_every_rank():
    """The loading rank names the layer; the others learn that it could not restore."""
    outcomes = run_ranks(_another_shape, WORLD, False, (1,), timeout=HANG_JOB_S, pg_timeout=5)
    _expect_on_every_rank(outcomes, "InvalidArgumentError",
                          r"another model \(layer \d+|'restored' is ok on rank 0 and failed on "
                          r"rank 1", step=0)
    assert "another model" in outcomes[1][1] and "'restored'" in outcomes[0][1], outcomes


# ---- settings refused at construction, on every rank -----------------------------------------
CONSTRUCTION = {
    "onebit-freeze_step-0": (lambda p: gct.OneBitAdam(p, freeze_step=0),
                             r"OneBitAdam: freeze_step 0 must be >= 1"),
    "onebit-lr-nan": (lambda p: gct.OneBitAdam(p, lr=float("nan")),
                      r"OneBitAdam: lr must be a finite number, got nan"),
    "onebit-lr-inf": (lambda p: gct.OneBitAdam(p, lr=float("inf")),
                      r"OneBitAdam: lr must be a finite number, got inf"),
    "onebit-lr-negative": (lambda p: gct.OneBitAdam(p, lr=-1e-3),
                           r"OneBitAdam: lr -0\.001 must be finite and >= 0"),
    "onebit-eps-0": (lambda p: gct.OneBitAdam(p, eps=0.0),
                     r"OneBitAdam: eps 0 must be finite and > 0"),
    "dgc-selection-None": (lambda p: gct.DGCState(selection=None),
                           r"DGCState: selection must be one of \('sampled', 'exact'\), got "
                           r"None"),
    "dgc-density-None": (lambda p: gct.DGCState(density=None),
                         r"DGCState: density must be a finite number, got None"),
    "dgc-density-nan": (lambda p: gct.DGCState(density=float("nan")),
                        r"DGCState: density must be a finite number, got nan"),
    "dgc-momentum-string": (lambda p: gct.DGCState(momentum="0.9"),
                            r"DGCState: momentum must be a finite number, got '0\.9'"),
    "dgc-exchange-None": (lambda p: gct.DGCState(exchange=None),
                          r"DGCState: exchange must be one of \('compressor', 'auto', 'dense', "
                          r"'allgather', 'reduce_scatter'\), got None"),
    "dgc-hierarchy-hierarchical": (lambda p: gct.DGCState(hierarchy="hierarchical"),
                                   r"DGCState: hierarchy='hierarchical' is not available in the "
                                   r"DDP hooks: .*host"),
    "quant-bits-None": (lambda p: gct.QuantState(bits=None),
                        r"QuantState: bits must be a finite number, got None"),
    "quant-bits-9": (lambda p: gct.QuantState(bits=9), r"bits 9 outside 1\.\.8"),
    "quant-rounding-None": (lambda p: gct.QuantState(rounding=None),
                            r"QuantState: rounding must be one of \('nearest', 'stochastic'\), "
                            r"got None"),
    "lgreco-selection-None": (lambda p: gct.LGreCoState(selection=None),
                              r"LGreCoState: selection must be one of \('sampled', 'exact'\), "
                              r"got None"),
    "nonfinite-None": (lambda p: gct.AllreduceState(nonfinite=None),
                       r"nonfinite must be one of \('error', 'skip_step', 'zero'\), got None"),
    "bucket_bytes-0": (lambda p: gct.AllreduceState(bucket_bytes=0),
                       r"bucket_bytes must be a positive integer, got 0"),
}


def _construct_all(rank, world):
    params = list(tiny_net().parameters())
    outcomes = {}
    for case, (make, _) in CONSTRUCTION.items():
        start = time.monotonic()
        try:
            make(params)
            outcomes[case] = None
        except Exception as error:  # noqa: BLE001
            outcomes[case] = (type(error).__name__, isinstance(error, ValueError), str(error),
                              time.monotonic() - start)
    return outcomes


def test_settings_that_cannot_train_are_refused_at_construction_on_every_rank():
    for rank, outcomes in enumerate(run_ranks(_construct_all, WORLD, timeout=60)):
        for case, (_, words) in CONSTRUCTION.items():
            outcome = outcomes[case]
            assert outcome is not None, f"rank {rank}: {case} was accepted"
            name, is_value_error, message, seconds = outcome
            # A clear InvalidArgumentError, never a pybind11 signature dump.
            assert name == "InvalidArgumentError" and is_value_error, (case, name, message)
            assert "incompatible" not in message and "Invoked with" not in message, message
            assert re.search(words, message), (case, message)
            assert seconds < 1.0


def _onebit_other_dtype(rank, world, dtype, cast_after):
    def make(r, net, model):
        if cast_after:  # the optimizer sees float32 parameters, the model is cast later
            net.float()
            opt = gct.OneBitAdam(model.parameters())
            net.to(dtype)
            return opt, gct.onebit_adam_hook
        return gct.OneBitAdam(model.parameters()), gct.onebit_adam_hook
    return _train(rank, make, dtype=dtype)


@pytest.mark.parametrize("cast_after", [False, True], ids=["at-construction", "cast-later"])
def test_onebit_adam_refuses_a_float64_model_on_every_rank(cast_after):
    """1-bit Adam updates float32, bfloat16 and float16 parameters (16-bit ones through a
    float32 master copy): a float64 model is refused when the optimizer is built, or at the
    first step when the model was cast after that, naming the parameter and its dtype."""
    outcomes = run_ranks(_onebit_other_dtype, WORLD, torch.float64, cast_after, timeout=HANG_JOB_S)
    _expect_on_every_rank(outcomes, "InvalidArgumentError",
                          r"OneBitAdam: a parameter of shape \(\d+, \d+\) is torch.float64",
                          r"float32, bfloat16 or float16", step=0 if cast_after else -1)


# ---- errors users can act on ---------------------------------------------------------------
def _nan_on_one_rank(rank, world):
    def between(r, step, state, net):
        if r == 1 and step == 1:  # one element of 2.weight's gradient, from this step on
            net[2].weight.register_hook(lambda g: g.index_put(
                (torch.tensor([0]), torch.tensor([3])), torch.tensor(float("nan"))))
    return _train(rank, lambda r, net, m: (gct.DGCState(density=0.1, warmup=None,
                                                        named_parameters=_named(net)),
                                           gct.dgc_hook), between=between)


def test_a_nonfinite_gradient_under_error_names_the_parameter_and_ranks_on_every_rank():
    outcomes = run_ranks(_nan_on_one_rank, WORLD, timeout=HANG_JOB_S, pg_timeout=10)
    _expect_on_every_rank(outcomes, "Error", r"non-finite value",
                          r"1 of 2 ranks met NaN or Inf", r"first layer '2\.weight' on rank 1",
                          step=1)


def _backward_error(rank, world):
    net = tiny_net()
    model = nn.parallel.DistributedDataParallel(net)
    model.register_comm_hook(gct.DGCState(density=(0.1, 0.2)[rank]), gct.dgc_hook)
    x, y = next(batches(rank, 1))
    try:
        nn.CrossEntropyLoss()(model(x), y).backward()
    except Exception as error:  # noqa: BLE001
        return type(error).__module__, type(error).__qualname__, str(error)
    return None


def test_what_a_hook_error_looks_like_from_backward():
    """What a user's `except` sees. On torch 1.13: a plain RuntimeError (not a gradcomm
    type, so `except gradcomm.Error` misses it) whose text starts with the gradcomm type's
    name and ends with pybind11's traceback of the hook."""
    for rank, outcome in enumerate(run_ranks(_backward_error, WORLD, timeout=HANG_JOB_S)):
        assert outcome is not None, rank
        module, name, text = outcome
        if TORCH_1:
            assert (module, name) == ("builtins", "RuntimeError"), outcome
            assert text.startswith("InvalidArgumentError: gradcomm: size mismatch: DGCState "
                                   "settings: the settings differ between ranks: 'density' "
                                   "is 0.1"), text
            assert "\n\nAt:\n" in text and "dgc_hook" in text, text
        else:  # torch 2.x hands the gradcomm exception itself over
            assert name == "InvalidArgumentError", outcome
            assert "'density' is 0.1" in text, outcome
