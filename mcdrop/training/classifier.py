"""Training loops: the Fashion-MNIST classifier and the UCI regression protocol.

Training is reproducible for a seed: it runs inside ``torch.random.fork_rng`` seeded from the config,
so the caller's global RNG state is left as it was.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy import optimize
from torch import Tensor, nn

from mcdrop.nets.models import DropoutCNN, DropoutMLP
from mcdrop.sampling.engine import MCEngine
from mcdrop.training.configs import ClassifierConfig
from mcdrop.training.shift_augment import shift_augment

if TYPE_CHECKING:
    from mcdrop.uncertainty.calibration import Calibration

__all__ = ["ClassifierConfig", "augment", "build_classifier", "calibrate_and_measure", "fit_temperature", "split_indices",
           "train_classifier"]

Log = Callable[[str], None]


def _optimizer(config: ClassifierConfig, params: Any) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"optimizer has to be 'sgd' or 'adam', but got {config.optimizer!r}")


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        return float((model(x).argmax(-1) == y).float().mean())


def split_indices(n: int, config: ClassifierConfig) -> dict[str, Tensor]:
    """Row indices of the training, temperature and calibration parts of ``n`` training rows.

    A permutation seeded by ``config.seed`` holds out its first ``val_fraction``; with ``calibrate``, the held-out
    rows are split in two: the temperature is fitted on the first part, the conformal scores, OOD threshold and
    abstention data on the rest (``calibration_share`` of them), so the two never share a row.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        perm = torch.randperm(n)
    n_val = round(config.val_fraction * n)
    val = perm[:n_val]
    n_cal = round(config.calibration_share * n_val) if config.calibrate else 0
    return {"train": perm[n_val:], "temperature": val[:n_val - n_cal], "calibration": val[n_val - n_cal:],
            "validation": val}


def train_classifier(
    config: ClassifierConfig,
    x: Tensor,
    y: Tensor,
    *,
    n_classes: int = 10,
    log: Log | None = None,
    progress: bool = False,
    factory: Callable[[int, int], nn.Module] | None = None,
    penalty: Callable[[nn.Module], Tensor] | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a classifier on features ``x`` ``(N, D)`` in [0, 1] and labels ``y``.

    The model is ``factory(in_features, n_classes)`` when given, else :func:`build_classifier`'s; either is
    called under the config's seed.  It needs ``input_shift``, ``input_scale`` and ``temperature`` buffers, as
    :class:`DropoutMLP` has.
    The loss per step is the cross-entropy plus ``penalty(model)`` when given (e.g. Concrete dropout's
    regulariser).  ``on_epoch(epoch, model)`` is called after each epoch (the model in train mode).

    Rows are split by :func:`split_indices`: the held-out rows measure validation accuracy each epoch, and
    the temperature is fitted on their temperature part only.  Returns the model (eval mode) and a history
    with per-epoch loss and validation accuracy.
    """
    log = log or (lambda _msg: None)
    parts = split_indices(x.shape[0], config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        torch.randperm(x.shape[0])  # the split's draw: the training batches follow it, as they always have
        n_val = len(parts["validation"])
        xt, yt, xv, yv = x[parts["train"]], y[parts["train"]], x[parts["validation"]], y[parts["validation"]]
        model = (factory or partial(build_classifier, config))(x.shape[1], n_classes)
        model.get_buffer("input_shift").fill_(float(xt.mean()))
        model.get_buffer("input_scale").fill_(float(xt.std()))
        opt = _optimizer(config, model.parameters())
        steps = config.epochs * math.ceil(xt.shape[0] / config.batch_size)
        sched = (
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
            if config.schedule == "cosine"
            else torch.optim.lr_scheduler.LambdaLR(opt, lambda _s: 1.0)
        )
        history: dict[str, Any] = {"loss": [], "val_accuracy": []}
        bar = _progress(config.epochs) if progress else None
        start = time.perf_counter()
        for epoch in range(config.epochs):
            model.train()
            total, count = 0.0, 0
            for idx in torch.randperm(xt.shape[0]).split(config.batch_size):
                xb = augment(xt[idx]) if config.augment else xt[idx]
                xb = shift_augment(xb, max_rotation=config.shift_rotation) if config.shift_augment else xb
                loss = nn.functional.cross_entropy(model(xb), yt[idx])
                if penalty is not None:
                    loss = loss + penalty(model)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total, count = total + loss.item() * len(idx), count + len(idx)
            if on_epoch is not None:
                on_epoch(epoch, model)
            acc = _accuracy(model, xv, yv) if n_val else float("nan")
            history["loss"].append(total / count)
            history["val_accuracy"].append(acc)
            message = f"epoch {epoch + 1}/{config.epochs} loss {total / count:.4f} val_accuracy {acc:.4f}"
            if bar is not None:
                bar[0].update(bar[1], advance=1, description=message)
            else:
                log(message)
        if bar is not None:
            bar[0].stop()
        history["train_seconds"] = time.perf_counter() - start
        if config.calibrate and n_val:
            idx = parts["temperature"]
            temperature = fit_temperature(model, x[idx], y[idx], config.calibration_samples, seed=config.seed)
            model.get_buffer("temperature").fill_(temperature)
            log(f"temperature {temperature:.4f} (fitted on {len(idx)} held-out images; {len(parts['calibration'])} "
                "more are kept for the conformal and abstention calibration)")
    return model.eval(), history


def build_classifier(config: ClassifierConfig, in_features: int, n_classes: int) -> nn.Module:
    """The untrained :class:`DropoutMLP` or :class:`DropoutCNN` (square images of ``in_features`` pixels) the config
    describes (draws its initialisation from the global RNG)."""
    if config.architecture == "cnn":
        return DropoutCNN(_square(in_features), n_classes, channels=config.channels, hidden=config.hidden,
                          channel_dropout=config.channel_dropout, dropout=config.dropout,
                          convs_per_block=config.convs_per_block)
    return DropoutMLP(in_features, config.hidden, n_classes, dropout=config.dropout, input_dropout=config.input_dropout)


def _square(pixels: int) -> tuple[int, int]:
    side = math.isqrt(pixels)
    if side * side != pixels:
        raise ValueError(f"expected rows of square images, but a row has {pixels} values")
    return side, side


def augment(x: Tensor, max_shift: int = 2) -> Tensor:
    """Rows of square images, each flipped left-right with probability 1/2 and shifted by up to ``max_shift``
    pixels in each direction (zero fill); draws from the global RNG.  Shape: ``(B, H*W)`` -> ``(B, H*W)``."""
    b, (h, w) = x.shape[0], _square(x.shape[1])
    images = x.reshape(b, h, w)
    flip = torch.rand(b) < 0.5
    images = torch.where(flip.view(b, 1, 1), images.flip(-1), images)
    padded = nn.functional.pad(images, (max_shift,) * 4)
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (2, b)))
    rows = (dy.view(b, 1) + torch.arange(h)).view(b, h, 1)
    cols = (dx.view(b, 1) + torch.arange(w)).view(b, 1, w)
    return padded[torch.arange(b).view(b, 1, 1), rows, cols].reshape(b, h * w)


def fit_temperature(model: nn.Module, x: Tensor, y: Tensor, n_samples: int, *, seed: int = 0) -> float:
    """The ``T`` minimising the NLL of the MC mean ``mean_s softmax(z_s / T)`` on ``(x, y)``."""
    model.get_buffer("temperature").fill_(1.0)
    logits = MCEngine(model).sample(x, n_samples, seed=seed).double()  # (S, N, C)

    def nll(log_t: float) -> float:
        log_p = torch.logsumexp(torch.log_softmax(logits / math.exp(log_t), -1), 0) - math.log(n_samples)
        return float(-log_p[torch.arange(len(y)), y].mean())

    res = optimize.minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def calibrate_and_measure(model: nn.Module, config: ClassifierConfig, x: Tensor, y: Tensor, x_test: Tensor,
                          y_test: Tensor, test_images: Tensor, n_samples: int,
                          log: Log = lambda _: None) -> tuple[Calibration, dict[str, Any]]:
    """A Fashion-MNIST classifier's calibration on the held-out parts of the training images ``x`` (model inputs)
    of :func:`split_indices`, then its card figures: ``test_conformal`` on ``(x_test, y_test)`` and
    ``ood_proxies`` against the proxy sets made from ``test_images`` (uint8, ``(N, 28, 28)``); MC with
    ``n_samples`` passes.  ``mcdrop train`` and ``python -m mcdrop.training.refresh --recalibrate`` both call it."""
    from mcdrop.training.calibrate import calibrate_classifier, coverage_report, ood_report
    from mcdrop.training.data import FASHION_MNIST_CLASSES
    from mcdrop.training.proxies import PROXIES, make_proxy

    parts = split_indices(len(y), config)
    log(f"calibrating: density on {len(parts['train'])} training images, standardised on "
        f"{len(parts['temperature'])}, thresholds and conformal scores on {len(parts['calibration'])}")
    calibrated = calibrate_classifier(
        model, train=(x[parts["train"]], y[parts["train"]]),
        temperature=(x[parts["temperature"]], y[parts["temperature"]]),
        calibration=(x[parts["calibration"]], y[parts["calibration"]]), n_classes=10,
        class_names=FASHION_MNIST_CLASSES, n_samples=n_samples, seed=config.seed)
    coverage = coverage_report(calibrated, model, (x_test, y_test), n_samples=n_samples, seed=0)
    images = (test_images.numpy() / 255.0).astype("float32")
    proxies = {name: torch.from_numpy(make_proxy(name, images)).reshape(-1, 784) for name in PROXIES}
    ood = ood_report(MCEngine(model), calibrated, x_test, proxies, n_samples=n_samples)
    for proxy, row in ood.items():
        log(f"OOD {proxy}: ood_score AUROC {row['ood_score']['auroc']:.3f} FPR95 {row['ood_score']['fpr95']:.3f}; "
            f"MI AUROC {row['mc_mutual_information']['auroc']:.3f}")
    return calibrated, {"test_conformal": coverage, "ood_proxies": ood}


def _progress(total: int) -> tuple[Any, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    task = bar.add_task("training", total=total)
    bar.start()
    return bar, task
