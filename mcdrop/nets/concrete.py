"""Concrete dropout (Gal, Hron & Kendall 2017): the dropout rate is a trained parameter.

Training replaces the Bernoulli keep mask by its relaxation (a Concrete / relaxed Bernoulli variable) so the
loss is differentiable in the rate ``p = sigmoid(a)``, ``a`` the parameter ``p_logit``:

    z = 1 - sigmoid((logit p + log(u + eps) - log(1 - u + eps)) / t),   u ~ U(0, 1),   h' = h * z / (1 - p)

(``logit p = log p - log(1 - p)`` is ``a`` itself, which is how it is computed).  As ``t -> 0``, ``z`` becomes
the hard mask ``1[u < 1 - p]``: the unit is dropped when ``u > 1 - p``, with probability ``p``.  The rate is
pulled towards 1/2 by the entropy of the dropout posterior and towards what the data supports by the loss;
the regulariser of one layer, for the weights ``W`` that the dropped units feed (``K`` of them), is

    R = weight_reg * |W|^2 / (1 - p) + dropout_reg * K * (p log p + (1 - p) log(1 - p)),

with the paper's ``weight_reg = l^2 / N`` and ``dropout_reg = 2 / N`` for ``N`` training rows
(:func:`concrete_penalty`).  Those two match the ELBO of a loss of twice the mean NLL per row, the paper's
regression loss ``mean[(y - mu)^2 / sigma^2 + log sigma^2]``; with a plain cross-entropy the prior terms weigh
twice as much as the ELBO says.

Inference is ordinary keyed dropout at the learned rate: :meth:`ConcreteDropout.mc_forward` is
:func:`mcdrop.sampling.functional.mc_dropout`, and :func:`to_dropout` turns a trained model into a plain
:class:`~mcdrop.nets.models.DropoutMLP` (saved, served and sampled by the fused kernel like any other).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mcdrop.nets.models import DropoutMLP
from mcdrop.request import Task
from mcdrop.sampling import functional as F
from mcdrop.sampling.layers import MCDropoutLayer

__all__ = [
    "ConcreteDropout",
    "concrete_dropout",
    "concrete_mlp",
    "concrete_penalty",
    "concrete_regulariser",
    "keep_mask_from_noise",
    "learned_rates",
    "logistic_noise",
    "relaxed_keep_mask",
    "to_dropout",
]

EPS = 1e-7


def logistic_noise(u: Tensor, eps: float = EPS) -> Tensor:
    """``log(u + eps) - log(1 - u + eps)``: standard logistic noise from uniforms ``u`` (eps keeps it finite)."""
    return torch.log(u + eps) - torch.log(1.0 + eps - u)


def relaxed_keep_mask(u: Tensor, p_logit: Tensor, temperature: float, eps: float = EPS) -> Tensor:
    """The relaxed keep mask ``z = 1 - sigmoid((p_logit + log(u + eps) - log(1 - u + eps)) / t)`` in (0, 1).

    Shape: u ``(*)``, p_logit any shape broadcastable with it (a scalar, or ``(G, 1, 1)`` for G stacked
    networks) -> ``(*)``.  As ``t -> 0`` it tends to ``1[u < 1 - p]`` (``p = sigmoid(p_logit)``).
    """
    return keep_mask_from_noise(logistic_noise(u, eps), p_logit, temperature)


def keep_mask_from_noise(noise: Tensor, p_logit: Tensor, temperature: float) -> Tensor:
    """``sigmoid(-(p_logit + noise) / t)``: :func:`relaxed_keep_mask` given its logistic noise (which does not
    depend on the rate, so a training loop may draw a whole epoch's at once)."""
    if not temperature > 0:
        raise ValueError(f"the Concrete temperature has to be > 0, but got {temperature}")
    return torch.sigmoid((p_logit + noise) / -temperature)


def concrete_dropout(x: Tensor, p_logit: Tensor, temperature: float, u: Tensor | None = None,
                     generator: torch.Generator | None = None, *, noise: Tensor | None = None) -> Tensor:
    """Training-time Concrete dropout ``x * z / (1 - p)`` with ``z`` from :func:`relaxed_keep_mask`.

    ``u`` (uniforms shaped like ``x``) defaults to fresh draws from ``generator`` or torch's global RNG; or
    pass the logistic ``noise`` itself.  Shape: x ``(*)``, p_logit broadcastable with it -> ``(*)``.
    """
    if noise is None:
        if u is None:
            u = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
        noise = logistic_noise(u)
    return x * (keep_mask_from_noise(noise, p_logit, temperature) / torch.sigmoid(-p_logit))  # / (1 - p)


def concrete_regulariser(sq_norm: Tensor, k: int, p_logit: Tensor, weight_reg: float | Tensor,
                         dropout_reg: float | Tensor) -> Tensor:
    """``weight_reg * sq_norm / (1 - p) + dropout_reg * k * (p log p + (1 - p) log(1 - p))``, elementwise.

    ``sq_norm`` is ``|W|^2`` of the weights fed by the ``k`` dropped units; ``log p`` and ``log(1 - p)`` are
    computed as ``logsigmoid(+-p_logit)``.  Shape: sq_norm and p_logit broadcastable -> their broadcast.
    """
    p = torch.sigmoid(p_logit)
    neg_entropy = p * nn.functional.logsigmoid(p_logit) + (1 - p) * nn.functional.logsigmoid(-p_logit)
    return weight_reg * sq_norm / (1 - p) + dropout_reg * k * neg_entropy


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


class ConcreteDropout(MCDropoutLayer):
    """Dropout whose rate ``p = sigmoid(p_logit)`` is learned (relaxed Bernoulli mask in training).

    Args:
        p: initial rate, ``0 < p < 1``. Default: 0.1.
        temperature: temperature ``t`` of the relaxation (the paper: 0.1). Default: 0.1.

    In training: ``x * z / (1 - p)`` with ``z`` from :func:`relaxed_keep_mask` and uniforms from torch's global
    RNG.  In eval: the identity.  MC passes (:meth:`mc_forward`): keyed Bernoulli dropout at the current ``p``.

    Shape: input ``(*)``, output the same.
    """

    def __init__(self, p: float = 0.1, temperature: float = 0.1) -> None:
        super().__init__()
        p = F.check_probability(p, name="initial Concrete dropout rate")
        if not 0.0 < p < 1.0:
            raise ValueError(f"initial Concrete dropout rate has to be in (0, 1), but got {p}")
        if not temperature > 0:
            raise ValueError(f"the Concrete temperature has to be > 0, but got {temperature}")
        self.temperature = float(temperature)
        self.p_logit = nn.Parameter(torch.tensor(_logit(p)))

    @property
    def p(self) -> float:  # type: ignore[override]  # read-only here: the rate is learned, not set
        """The current rate ``sigmoid(p_logit)`` as a Python float."""
        return float(torch.sigmoid(self.p_logit.detach()))

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        return concrete_dropout(x, self.p_logit.to(x.dtype), self.temperature)

    def mc_forward(self, x: Tensor, keys: Tensor) -> Tensor:
        return F.mc_dropout(x, keys, self.p)

    def regulariser(self, weight: Tensor, weight_reg: float, dropout_reg: float) -> Tensor:
        """``weight_reg |W|^2 / (1 - p) + dropout_reg K (p log p + (1 - p) log(1 - p))``, ``K = weight.shape[1]``.

        Shape: weight ``(out, K)`` (an ``nn.Linear`` fed by this dropout) -> scalar.
        """
        return concrete_regulariser(weight.square().sum(), weight.shape[1], self.p_logit, weight_reg, dropout_reg)

    def extra_repr(self) -> str:
        return f"p={self.p:.4g}, temperature={self.temperature}"


def concrete_mlp(in_features: int, hidden: Sequence[int], out_features: int, *, p: float = 0.1,
                 input_dropout: bool = True, head: Task | str = Task.CLASSIFICATION, tau: float | None = None,
                 temperature: float = 0.1) -> DropoutMLP:
    """A :class:`DropoutMLP` whose dropout modules are :class:`ConcreteDropout` at initial rate ``p``.

    With ``input_dropout`` the input has one too.  Buffers, ``forward`` and heads are the MLP's; ``config()``
    still states the initial rates (serve the trained model through :func:`to_dropout`).
    """
    model = DropoutMLP(in_features, hidden, out_features, dropout=p, input_dropout=p if input_dropout else 0.0,
                       head=head, tau=tau)
    for i, module in enumerate(model.net):
        if isinstance(module, MCDropoutLayer):
            model.net[i] = ConcreteDropout(p, temperature)
    return model


def _pairs(model: nn.Module) -> list[tuple[str, ConcreteDropout, nn.Linear]]:
    """(name, ConcreteDropout, the first nn.Linear after it) in ``model.net``."""
    net = list(model.get_submodule("net").named_children())
    out = []
    for i, (name, module) in enumerate(net):
        if isinstance(module, ConcreteDropout):
            linear = next((m for _, m in net[i + 1:] if isinstance(m, nn.Linear)), None)
            if linear is None:
                raise ValueError(f"ConcreteDropout net.{name} feeds no nn.Linear: its regulariser needs the weights "
                                 "it drops units of")
            out.append((f"net.{name}", module, linear))
    return out


def concrete_penalty(model: nn.Module, n_train: int, length_scale: float = 1e-4) -> Tensor:
    """Sum over (ConcreteDropout, the ``nn.Linear`` after it) of ``regulariser(W, l^2 / N, 2 / N)``.

    Add it to the mean loss of each step (e.g. ``train_classifier(..., penalty=lambda m: concrete_penalty(m,
    n))``).  ``N = n_train`` rows, ``l = length_scale`` the prior length-scale (the paper: 1e-4).
    """
    if n_train < 1:
        raise ValueError(f"n_train has to be a positive number of training rows, but got {n_train}")
    pairs = _pairs(model)
    if not pairs:
        raise ValueError("the model has no ConcreteDropout layer: build it with concrete_mlp")
    wr, dr = length_scale**2 / n_train, 2.0 / n_train
    return torch.stack([drop.regulariser(linear.weight, wr, dr) for _, drop, linear in pairs]).sum()


def learned_rates(model: nn.Module) -> dict[str, float]:
    """The current rate of every :class:`ConcreteDropout`, by module name (e.g. ``{"net.0": 0.03, ...}``)."""
    return {name: m.p for name, m in model.named_modules() if isinstance(m, ConcreteDropout)}


def to_dropout(model: DropoutMLP) -> DropoutMLP:
    """The trained Concrete model as a plain :class:`DropoutMLP` with the learned rates (eval mode).

    ``dropout`` are the hidden layers' rates, ``input_dropout`` the input's (0 without one); weights and
    buffers are copied, so its deterministic output is the Concrete model's eval output and its MC passes are
    the Concrete model's (the same keyed masks), now by the fused kernel and savable by ``save_model``.
    Keyed masks resolve rates to ``2^-17``: a learned rate below that drops nothing, and if every rate is
    that small the engine refuses MC mode (the model has no epistemic spread left to sample).
    """
    net = list(model.net)
    if not any(isinstance(m, ConcreteDropout) for m in net):
        raise ValueError("the model has no ConcreteDropout layer: nothing to convert (build it with concrete_mlp)")
    hidden_rates = [d.p for i, m in enumerate(net)
                    if isinstance(m, nn.Linear) and i + 2 < len(net) and isinstance(d := net[i + 2], MCDropoutLayer)]
    input_rate = net[0].p if isinstance(net[0], MCDropoutLayer) else 0.0
    tau = float(model.tau)
    plain = DropoutMLP(model.in_features, model.hidden, model.out_features, dropout=hidden_rates,
                       input_dropout=input_rate, head=model.head, tau=None if math.isnan(tau) else tau)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("p_logit")}
    plain.load_state_dict(state)
    return plain.eval()
