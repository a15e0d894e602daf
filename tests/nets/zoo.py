"""Example user networks for the importer, each trained for a moment on synthetic data (seeded).

Every case is ``(model, example_input, export kwargs)``; inputs are tensors or tuples of tensors, batch first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class ResidualBlock(nn.Module):
    def __init__(self, width: int, p: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, width)
        self.drop = nn.Dropout(p)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop(F.gelu(self.fc(self.norm(x))))


class ResidualNet(nn.Module):
    """Skip connections around dropout, and F.dropout(x, p, self.training) in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.blocks = nn.Sequential(ResidualBlock(16, 0.2), ResidualBlock(16, 0.3))
        self.out = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(torch.relu(self.inp(x)))
        return self.out(F.dropout(h, 0.25, self.training))


class TwoInputs(nn.Module):
    """A table of 4 numbers and a 2-channel sequence of 6, merged; regression returning (B,)."""

    def __init__(self) -> None:
        super().__init__()
        self.tab = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.2))
        self.seq = nn.Sequential(nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3), nn.ELU(), nn.Dropout1d(0.25))
        self.head = nn.Linear(8 + 3 * 4, 1)

    def forward(self, table: Tensor, sequence: Tensor) -> Tensor:
        z = torch.cat([self.tab(table), self.seq(sequence).flatten(1)], dim=1)
        return self.head(F.dropout(z, 0.1, training=self.training)).squeeze(-1)


class MeanLogVar(nn.Module):
    """A heteroscedastic regressor returning a tuple (log-variance, mean): the user names the columns."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 24), nn.SiLU(), nn.Dropout(0.2), nn.Linear(24, 24), nn.SiLU(), nn.Dropout(0.2))
        self.mean = nn.Linear(24, 1)
        self.log_var = nn.Linear(24, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        return self.log_var(h), self.mean(h)


class SkipCNN(nn.Module):
    """A U-Net-like classifier: a skip connection around channel dropout, a transposed convolution, a ModuleList
    loop, view(size(0), -1) and a parameter used directly in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(2, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout2d(0.3)
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.mix = nn.ModuleList([nn.Conv2d(8, 8, 3, padding="same"), nn.Conv2d(8, 8, 1)])
        self.norm = nn.GroupNorm(2, 8)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x: Tensor) -> Tensor:
        d = F.relu(self.down(x))
        h = torch.cat([d, self.up(self.drop(self.pool(d)))], dim=1)
        for conv in self.mix:
            h = F.gelu(conv(h))
        h = self.gap(self.norm(h))
        return self.fc(h.view(h.size(0), -1)) * self.scale


def _mlp(out: int, p: float = 0.3, width: int = 32, d: int = 6) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Dropout(p), nn.Linear(width, width), nn.ReLU(), nn.Dropout(p),
                         nn.Linear(width, out))


def _cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout2d(0.2),
                         nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, 16), nn.LeakyReLU(0.1), nn.Dropout(0.5), nn.Linear(16, 4))


def _conv1d_regressor() -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.AvgPool1d(2), nn.Dropout1d(0.2), nn.Flatten(),
                         nn.Linear(4 * 5, 8), nn.Sigmoid(), nn.Dropout(0.3), nn.Linear(8, 1))


def _selu() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 16), nn.SELU(), nn.AlphaDropout(0.2), nn.Linear(16, 3))


def _train(model: nn.Module, inputs: tuple[Tensor, ...], y: Tensor, loss: Callable[[Any, Tensor], Tensor],
           steps: int = 60) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss(model(*inputs), y).backward()
        opt.step()
    return model.eval()


def _gaussian_nll(out: tuple[Tensor, Tensor], y: Tensor) -> Tensor:
    log_var, mean = out
    return (0.5 * (log_var.squeeze(-1) + (y - mean.squeeze(-1)) ** 2 / log_var.squeeze(-1).exp())).mean()


def case(name: str) -> tuple[nn.Module, Tensor | tuple[Tensor, ...], dict[str, Any]]:
    """The trained model, a few example rows and the export arguments of case ``name``."""
    torch.manual_seed(0)
    n = 256
    x6 = torch.randn(n, 6)
    cls = (x6[:, 0] > 0).long() + (x6[:, 1] > 0.5).long()
    reg = x6[:, 0] - 2 * x6[:, 1] + 0.1 * torch.randn(n)
    ce, mse = F.cross_entropy, lambda out, y: F.mse_loss(out.reshape(y.shape), y)
    if name == "mlp_classifier":
        model = _train(_mlp(3), (x6,), cls, ce)
        return model, x6[:8], {"task": "classification", "class_names": ["low", "mid", "high"]}
    if name == "mlp_regressor_b1":
        model = _train(_mlp(1), (x6,), reg, mse)
        return model, x6[:8], {"task": "regression", "tau": 100.0}
    if name == "mlp_regressor_k":
        targets = torch.stack([reg, -reg, 2 * reg], 1)
        model = _train(_mlp(3), (x6,), targets, lambda out, y: F.mse_loss(out, y))
        return model, x6[:8], {"task": "regression", "tau": 50.0, "target": 2}
    if name == "cnn_classifier":
        img = torch.randn(n, 1, 8, 8)
        y = (img[:, 0, :4].mean((1, 2)) > img[:, 0, 4:].mean((1, 2))).long() * 2 + (img[:, 0, :, :4].mean((1, 2)) > 0).long()
        model = _train(_cnn(), (img,), y, ce)
        return model, img[:8], {"task": "classification"}
    if name == "conv1d_regressor":
        seq = torch.randn(n, 1, 12)
        model = _train(_conv1d_regressor(), (seq,), seq.mean((1, 2)), mse)
        return model, seq[:8], {"task": "homoscedastic", "tau": 20.0}
    if name == "residual_classifier":
        model = _train(ResidualNet(), (x6,), cls, ce)
        return model, x6[:8], {"task": "classification"}
    if name == "two_inputs_regressor":
        table, seq = torch.randn(n, 4), torch.randn(n, 2, 6)
        model = _train(TwoInputs(), (table, seq), table[:, 0] + seq[:, 1].mean(1), mse)
        return model, (table[:8], seq[:8]), {"task": "regression", "tau": 10.0}
    if name == "heteroscedastic":
        x5 = torch.randn(n, 5)
        y = x5[:, 0] + (0.1 + x5[:, 1].abs()) * torch.randn(n)
        model = _train(MeanLogVar(), (x5,), y, _gaussian_nll)
        return model, x5[:8], {"task": "heteroscedastic", "mean": 1, "log_variance": 0}
    if name == "selu_alpha_dropout":
        model = _train(_selu(), (x6,), cls, ce)
        return model, x6[:8], {"task": "classification"}
    if name == "mlp_heteroscedastic_columns":  # (B, 2) with the log-variance first: a DropoutMLP with its rows swapped
        y = x6[:, 0] + (0.1 + x6[:, 1].abs()) * torch.randn(n)
        model = _train(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2)), (x6,), y,
                       lambda out, y: _gaussian_nll((out[:, 0], out[:, 1]), y))
        return model, x6[:8], {"task": "heteroscedastic", "mean": 1, "log_variance": 0}
    if name == "binary_logit":
        model = _train(nn.Sequential(nn.Linear(6, 16), nn.Hardswish(), nn.Dropout(0.3), nn.Linear(16, 1)), (x6,),
                       (x6[:, 0] > 0).float(), lambda out, y: F.binary_cross_entropy_with_logits(out.squeeze(-1), y))
        return model, x6[:8], {"task": "classification", "class_names": ["no", "yes"]}
    if name == "skip_cnn":
        img = torch.randn(n, 2, 6, 6)
        y = (img[:, 0].mean((1, 2)) > 0).long() + (img[:, 1].mean((1, 2)) > 0.1).long()
        model = _train(SkipCNN(), (img,), y, ce, steps=30)
        return model, img[:8], {"task": "classification"}
    raise KeyError(name)


CASES = ("mlp_classifier", "mlp_regressor_b1", "mlp_regressor_k", "cnn_classifier", "conv1d_regressor",
         "residual_classifier", "two_inputs_regressor", "heteroscedastic", "selu_alpha_dropout", "binary_logit",
         "mlp_heteroscedastic_columns",
         "skip_cnn")


class Original(nn.Module):
    """The original module behind one flat row, with the export's head: what ``MCEngine`` samples for comparison.
    Its only child is the model, so its dropout layers keep their order."""

    def __init__(self, model: nn.Module, example: Tensor | tuple[Tensor, ...], kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        examples = (example,) if isinstance(example, Tensor) else example
        self.shapes = [tuple(t.shape[1:]) for t in examples]
        self.kwargs = kwargs

    def forward(self, x: Tensor) -> Tensor:
        parts, start = [], 0
        for shape in self.shapes:
            size = int(torch.tensor(shape).prod()) if shape else 1
            parts.append(x[:, start:start + size].reshape(x.shape[0], *shape))
            start += size
        out = self.model(*parts)
        if isinstance(out, tuple):
            out = torch.cat([t.reshape(t.shape[0], -1) for t in out], 1)
        out = out.reshape(out.shape[0], -1)
        task, kw = self.kwargs["task"], self.kwargs
        if task == "classification":
            return torch.cat([torch.zeros_like(out), out], 1) if out.shape[1] == 1 else out
        if task == "heteroscedastic":
            return torch.stack([out[:, kw.get("mean", 0)], out[:, kw.get("log_variance", 1)]], -1)
        return out[:, kw.get("target", 0)]


def flat(example: Tensor | tuple[Tensor, ...]) -> Tensor:
    examples = (example,) if isinstance(example, Tensor) else example
    return torch.cat([t.reshape(t.shape[0], -1) for t in examples], 1)
