"""RGD: re-weighted gradient descent over per-example losses (Kumar et al., TMLR 2024)."""

from __future__ import annotations

import torch

from descent.optim._validation import check_positive


def rgd_weights(
    losses: torch.Tensor, tau: float = 1.0, temperature: float | None = None
) -> torch.Tensor:
    r"""Per-example weights :math:`w_i = \exp(\min(\ell_i, \tau) / T)`, detached from the graph.

    The weights come from KL-divergence distributionally robust optimisation: harder examples
    (larger loss) weigh more, and :math:`\tau` caps the loss so that one outlier cannot take
    over the batch.

    Args:
        losses: per-example losses, shape ``(batch,)`` (``reduction='none'``).
        tau: the loss clip :math:`\tau` (default 1.0).
        temperature: :math:`T`; default ``tau + 1``, the form public code citing the paper uses.

    References:
        Kumar, Majmundar, Nagaraj, Suggala, "Stochastic Re-weighted Gradient Descent via
        Distributionally Robust Optimization", TMLR 2024, arXiv:2306.09222.
    """
    tau = check_positive("tau", tau)
    temperature = tau + 1.0 if temperature is None else check_positive("temperature", temperature)
    if not isinstance(losses, torch.Tensor):
        raise TypeError(f"losses must be a tensor, got {type(losses).__name__}")
    if losses.dim() != 1:
        raise ValueError(
            "RGD needs per-example losses of shape (batch,) -- compute the loss with "
            f"reduction='none' -- got shape {tuple(losses.shape)}"
        )
    return torch.exp(losses.detach().clamp(max=tau) / temperature)


def rgd_loss(
    losses: torch.Tensor, tau: float = 1.0, temperature: float | None = None
) -> torch.Tensor:
    r"""The RGD objective :math:`\frac1n \sum_i w_i\,\ell_i` (not normalised by :math:`\sum w`).

    The two-line change to a training loop::

        losses = F.cross_entropy(logits, y, reduction="none")
        loss = rgd_loss(losses, tau=1.0)

    See :func:`rgd_weights` for the weights and their parameters.
    """
    return (rgd_weights(losses, tau, temperature) * losses).mean()
