"""Every registered optimizer: creation, exact resume, convergence, and refusal of bad input."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from descent import minimize
from descent.optim import OPTIMIZERS, Lion, Sophia, create_optimizer, gnb_loss
from descent.workloads.landscapes import LANDSCAPES
from tests.conftest import mlp_batches, small_mlp

# Hyperparameters that every optimizer needs to run the shared tests (the rest: defaults).
RUN_WITH = {name: {"lr": 1e-2} for name in OPTIMIZERS}
RUN_WITH["sophia"] = {"lr": 1e-2, "bs": 16, "k": 3}


def test_registry_names_torch_classes_and_descents_own():
    assert list(OPTIMIZERS) == [
        "sgd", "momentum", "nesterov", "adam", "adamw", "adagrad", "rmsprop", "lion", "sophia",
    ]  # fmt: skip
    assert OPTIMIZERS["adamw"].cls is torch.optim.AdamW
    assert OPTIMIZERS["lion"].cls is Lion and OPTIMIZERS["sophia"].cls is Sophia
    nesterov = create_optimizer("Nesterov", [torch.zeros(1, requires_grad=True)])
    assert type(nesterov) is torch.optim.SGD
    assert nesterov.param_groups[0]["momentum"] == 0.9 and nesterov.param_groups[0]["nesterov"]
    momentum = create_optimizer("momentum", [torch.zeros(1, requires_grad=True)], momentum=0.5)
    assert momentum.param_groups[0]["momentum"] == 0.5


def test_unknown_name_lists_what_is_allowed():
    with pytest.raises(ValueError, match=r"Unknown optimizer 'adamax'.*sgd, momentum.*sophia"):
        create_optimizer("adamax", [torch.zeros(1, requires_grad=True)])


def test_unknown_hyperparameter_lists_what_is_allowed():
    with pytest.raises(ValueError, match=r"Unknown hyperparameter\(s\) beta1 .*allowed: lr, betas"):
        create_optimizer("lion", [torch.zeros(1, requires_grad=True)], beta1=0.9)


def train(model, optimizer, batches):
    generator = torch.Generator().manual_seed(123)
    for index, (x, y) in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if getattr(optimizer, "curvature_due", False):
            optimizer.zero_grad(set_to_none=True)
            gnb_loss(model(batches[(index + 1) % len(batches)][0]), generator=generator).backward()
            optimizer.update_hessian()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_dict_resume_is_bitwise_equal_to_a_straight_run(name):
    n = 7
    batches = mlp_batches(2 * n)
    straight = small_mlp()
    optimizer = create_optimizer(name, straight.parameters(), **RUN_WITH[name])
    train(straight, optimizer, batches)

    first = small_mlp()
    optimizer = create_optimizer(name, first.parameters(), **RUN_WITH[name])
    train(first, optimizer, batches[:n])
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed = small_mlp(seed=99)  # different weights: everything must come from the file
    resumed.load_state_dict(saved["model"])
    optimizer = create_optimizer(name, resumed.parameters(), **RUN_WITH[name])
    optimizer.load_state_dict(saved["optimizer"])
    train(resumed, optimizer, batches[n:])

    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(next(straight.parameters()), next(small_mlp().parameters()))


# The convergence table: hyperparameters written here, tolerance on the distance to the minimum.
CONVERGENCE = [
    # (optimizer, landscape, steps, hyperparameters, tolerance)
    ("sgd", "ill_conditioned", 3000, {"lr": 0.015}, 1e-9),
    ("momentum", "ill_conditioned", 2000, {"lr": 5e-3}, 1e-9),
    ("nesterov", "ill_conditioned", 2000, {"lr": 5e-3}, 1e-9),
    ("adam", "ill_conditioned", 5000, {"lr": 1e-2}, 1e-4),
    ("adamw", "ill_conditioned", 5000, {"lr": 1e-2, "weight_decay": 0.0}, 1e-4),
    ("adagrad", "ill_conditioned", 3000, {"lr": 0.5}, 1e-5),
    ("rmsprop", "ill_conditioned", 3000, {"lr": 1e-3}, 5e-3),
    ("lion", "ill_conditioned", 3000, {"lr": 1e-3}, 5e-3),  # sign steps hover within ~lr
    ("sophia", "ill_conditioned", 3000, {"lr": 0.05, "rho": 0.05, "weight_decay": 0.0}, 1e-9),
    ("sgd", "rosenbrock", 5000, {"lr": 2e-3}, 5e-3),
    ("momentum", "rosenbrock", 5000, {"lr": 1e-3}, 1e-6),
    ("nesterov", "rosenbrock", 5000, {"lr": 1e-3}, 1e-6),
    ("adam", "rosenbrock", 5000, {"lr": 1e-2}, 1e-6),
    ("adamw", "rosenbrock", 5000, {"lr": 1e-2, "weight_decay": 0.0}, 1e-6),
    ("adagrad", "rosenbrock", 5000, {"lr": 1.0}, 0.1),  # the shrinking step crawls the valley
    ("rmsprop", "rosenbrock", 5000, {"lr": 1e-4, "momentum": 0.9}, 1e-4),
    ("lion", "rosenbrock", 5000, {"lr": 1e-3}, 1e-6),
    ("sophia", "rosenbrock", 3000, {"lr": 0.2, "rho": 0.1, "weight_decay": 0.0}, 1e-6),
]


@pytest.mark.parametrize(
    ("name", "landscape", "steps", "hyperparameters", "tolerance"),
    CONVERGENCE,
    ids=[f"{row[0]}-{row[1]}" for row in CONVERGENCE],
)
def test_every_optimizer_converges_on_the_table(name, landscape, steps, hyperparameters, tolerance):
    surface = LANDSCAPES[landscape]
    trajectory = minimize(surface, surface.start, name, steps, **hyperparameters)
    _, distance = surface.nearest_minimum(trajectory.x)
    assert trajectory.diverged_at is None
    assert distance <= tolerance, f"{name} ended {distance:.3g} from the minimum"


def test_the_table_covers_every_optimizer_on_both_landscapes():
    covered = {(row[0], row[1]) for row in CONVERGENCE}
    assert covered == {(n, s) for n in OPTIMIZERS for s in ("ill_conditioned", "rosenbrock")}


# -- bad input ---------------------------------------------------------------------------------

BAD_INPUT = [
    ("sgd", {"lr": -0.1}, ValueError, "Invalid lr: -0.1"),
    ("adam", {"lr": float("nan")}, ValueError, "Invalid lr: nan"),
    ("adamw", {"betas": (0.9, 1.0)}, ValueError, r"Invalid beta2: 1.0 \(allowed: 0 <= beta2 < 1\)"),
    ("lion", {"lr": -1e-4}, ValueError, r"Invalid lr: -0.0001 \(allowed: 0 <= lr < inf\)"),
    ("lion", {"betas": (-0.1, 0.99)}, ValueError, "Invalid beta1: -0.1"),
    ("lion", {"betas": (0.9,)}, TypeError, "expected a pair"),
    ("lion", {"weight_decay": float("nan")}, ValueError, "Invalid weight_decay: nan"),
    ("lion", {"lr": "fast"}, TypeError, "Invalid lr: 'fast'"),
    ("sophia", {"rho": 0.0}, ValueError, r"Invalid rho: 0.0 \(allowed: 0 < rho < inf\)"),
    ("sophia", {"rho": -1.0}, ValueError, "Invalid rho: -1.0"),
    ("sophia", {"k": 0}, ValueError, r"Invalid k: 0 \(allowed: k >= 1\)"),
    ("sophia", {"k": 2.5}, TypeError, "Invalid k: 2.5"),
    ("sophia", {"betas": (0.965, float("nan"))}, ValueError, "Invalid beta2: nan"),
    ("sophia", {"eps": float("nan")}, ValueError, "Invalid eps: nan"),
    ("sophia", {"bs": 0}, ValueError, "Invalid bs: 0"),
    ("rmsprop", {"momentum": float("inf")}, ValueError, "Invalid momentum: inf"),
]


@pytest.mark.parametrize(("name", "hyperparameters", "error", "message"), BAD_INPUT)
def test_bad_hyperparameters_are_refused_with_their_name(name, hyperparameters, error, message):
    with pytest.raises(error, match=message):
        create_optimizer(name, [torch.zeros(2, requires_grad=True)], **hyperparameters)


@pytest.mark.parametrize("cls", [Lion, Sophia])
def test_bad_hyperparameter_in_a_later_param_group_is_refused(cls):
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="Invalid lr: -1"):
        cls([{"params": [a]}, {"params": [b], "lr": -1}])


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_empty_parameter_list_is_refused(name):
    with pytest.raises(ValueError, match="empty"):
        create_optimizer(name, [])


@pytest.mark.parametrize("cls", [Lion, Sophia])
def test_a_single_tensor_instead_of_a_list_is_refused(cls):
    with pytest.raises(TypeError, match="wrap it in a list"):
        cls(torch.zeros(2, requires_grad=True))


@pytest.mark.parametrize("cls", [Lion, Sophia])
def test_sparse_gradients_are_refused(cls):
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    optimizer = cls(embedding.parameters(), bs=1) if cls is Sophia else cls(embedding.parameters())
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(TypeError, match="does not support sparse gradients"):
        optimizer.step()


@pytest.mark.parametrize("cls", [Lion, Sophia])
def test_complex_parameters_are_refused(cls):
    with pytest.raises(TypeError, match="complex"):
        cls([torch.zeros(2, dtype=torch.complex64, requires_grad=True)])


# -- a property: the step is bounded and finite ---------------------------------------------

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=64)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["lion", "sophia"]),
    lr=st.floats(min_value=0.0, max_value=1.0),
    beta1=st.floats(min_value=0.0, max_value=0.999),
    beta2=st.floats(min_value=0.0, max_value=0.999),
    weight_decay=st.floats(min_value=0.0, max_value=1.0),
    theta=st.lists(finite, min_size=1, max_size=6),
    gradients=st.lists(st.lists(finite, min_size=6, max_size=6), min_size=1, max_size=4),
    curvature=st.lists(finite, min_size=6, max_size=6),
)
def test_each_coordinate_moves_at_most_lr_times_one_plus_decay(
    name, lr, beta1, beta2, weight_decay, theta, gradients, curvature
):
    x = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    hyper = dict(lr=lr, betas=(beta1, beta2), weight_decay=weight_decay)
    if name == "sophia":
        hyper.update(bs=3, k=1)
    optimizer = create_optimizer(name, [x], **hyper)
    for g in gradients:
        before = x.detach().clone()
        x.grad = torch.tensor(g[: len(theta)], dtype=torch.float64)
        optimizer.step()
        bound = lr * (1 + weight_decay * before.abs())
        assert torch.isfinite(x).all()
        # plus rounding: theta * (1 - lr * wd) may land one ulp of theta away
        rounding = 2 * torch.finfo(torch.float64).eps * before.abs()
        assert ((x.detach() - before).abs() <= bound * (1 + 1e-12) + rounding).all()
        if name == "sophia":  # curvature of either sign, as Hutchinson can give
            optimizer.update_hessian(
                {x: torch.tensor(curvature[: len(theta)], dtype=torch.float64)}
            )
            assert math.isfinite(optimizer.win_rate())
