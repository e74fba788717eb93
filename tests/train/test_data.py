"""Input validation before training, one message per problem; the seeded epoch order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from descent.train import TrainConfig, fit
from descent.train.data import epoch_permutation, to_batches
from tests.train.problems import least_squares, linear_model

CONFIG = TrainConfig(steps=1, progress="none")


def _fit(data, model=None, config=CONFIG, **kwargs):
    return fit(model or linear_model(), data, F.mse_loss, config, **kwargs)


def test_nan_in_x_is_refused():
    x, y, _ = least_squares()
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"X contains NaN or inf in 1 entries"):
        _fit((x, y))


def test_inf_in_y_is_refused():
    x, y, _ = least_squares()
    y[0, 0] = float("inf")
    y[5, 0] = -float("inf")
    with pytest.raises(ValueError, match=r"y contains NaN or inf in 2 entries"):
        _fit((x, y))


def test_nan_in_validation_data_is_refused_by_name():
    x, y, _ = least_squares()
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"val_data: X contains NaN"):
        _fit((x, y), val_data=(bad, y))


def test_mismatched_lengths_are_refused():
    x, y, _ = least_squares()
    with pytest.raises(ValueError, match=r"different lengths: 64 examples in X, 63 in y"):
        _fit((x, y[:-1]))


def test_an_empty_data_set_is_refused():
    x, y, _ = least_squares()
    with pytest.raises(ValueError, match=r"train_data is empty: X and y have 0 examples"):
        _fit((x[:0], y[:0]))


def test_an_empty_dataset_object_is_refused():
    x, y, _ = least_squares()
    with pytest.raises(ValueError, match=r"train_data is empty: the Dataset has 0 examples"):
        _fit(torch.utils.data.Subset(TensorDataset(x, y), []))


def test_a_batch_size_larger_than_the_data_is_refused():
    x, y, _ = least_squares()
    config = TrainConfig(steps=1, batch_size=65, progress="none")
    with pytest.raises(
        ValueError, match=r"batch_size 65 is larger than train_data \(64 examples\)"
    ):
        _fit((x, y), config=config)


def test_integer_features_are_refused_unless_allowed():
    x, y, _ = least_squares()
    integers = x.round().long()
    with pytest.raises(ValueError, match=r"X has integer dtype torch.int64.*allow_integer_inputs"):
        _fit((integers, y))

    embedding = nn.Sequential(nn.Embedding(10, 1), nn.Flatten(0))
    tokens = torch.randint(0, 10, (16,))
    allowed = TrainConfig(steps=1, allow_integer_inputs=True, progress="none")
    fit(embedding, (tokens, torch.randn(16)), F.mse_loss, allowed)


def test_a_model_without_trainable_parameters_is_refused():
    x, y, _ = least_squares()
    model = linear_model().requires_grad_(False)
    with pytest.raises(ValueError, match="the model has no trainable parameters"):
        _fit((x, y), model=model)


def test_data_of_an_unknown_kind_is_refused():
    with pytest.raises(TypeError, match=r"train_data must be a pair \(X, y\).*got dict"):
        _fit({"X": 1})


def test_a_dataloader_with_a_batch_size_in_the_config_is_refused():
    x, y, _ = least_squares()
    config = TrainConfig(steps=1, batch_size=8, progress="none")
    with pytest.raises(ValueError, match=r"DataLoader, which batches by itself"):
        _fit(DataLoader(TensorDataset(x, y), batch_size=8), config=config)


def test_arrays_of_objects_are_refused():
    _, y, _ = least_squares()
    with pytest.raises(TypeError, match=r"X must hold numbers, got dtype object"):
        _fit((np.array([["a"]] * 64, dtype=object), y))


def test_epoch_order_is_without_replacement_seeded_and_new_each_epoch():
    orders = [epoch_permutation(50, seed=3, epoch=e) for e in range(3)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(50))
    assert not torch.equal(orders[0], orders[1])
    assert torch.equal(orders[2], epoch_permutation(50, seed=3, epoch=2))
    assert not torch.equal(orders[0], epoch_permutation(50, seed=4, epoch=0))


def test_mini_batches_cover_each_epoch_once_with_a_short_last_batch():
    x = torch.arange(10, dtype=torch.float64).reshape(10, 1)
    seen = []

    def loss_fn(outputs, targets):
        seen.append(sorted(targets.ravel().tolist()))
        return F.mse_loss(outputs, targets)

    config = TrainConfig(lr=0.0, batch_size=4, epochs=2, progress="none")
    fit(linear_model(1), (x, x.clone()), loss_fn, config)
    assert [len(batch) for batch in seen] == [4, 4, 2, 4, 4, 2]
    for epoch in (seen[:3], seen[3:]):
        assert sorted(v for batch in epoch for v in batch) == list(range(10))
    assert seen[:3] != seen[3:]


def test_large_finite_values_whose_sum_overflows_are_accepted():
    big = torch.full((64, 4), 3e38, dtype=torch.float32)  # the sum is inf, no entry is
    batches = to_batches(
        (big, torch.zeros(64)),
        batch_size=None,
        seed=0,
        dtype=torch.float32,
        device=torch.device("cpu"),
        allow_integer_inputs=False,
    )
    assert torch.equal(batches.get(0)[0], big)
