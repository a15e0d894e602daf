"""Out-of-distribution proxy sets for 28x28 grayscale classifiers, made here (no download, no held-back data).

Each returns images ``(N, 28, 28)`` float32 in [0, 1], like Fashion-MNIST scaled by 1/255:

* ``digits``: scikit-learn's bundled 8x8 handwritten digits, upscaled to 20x20 and centred in 28x28 as MNIST is;
* ``characters``: letters and digits drawn with matplotlib's fonts at random weights, sizes, slants and
  rotations, cropped and centred MNIST-style (thin strokes, unlike the upscaled digits);
* ``flip``, ``rotate``: Fashion-MNIST test images upside down, or turned by 90 degrees (near shift: the same
  pixels and texture, in positions the classes never had);
* ``invert``: Fashion-MNIST test images with light and dark swapped;
* ``noise``: uniform noise (far shift).

``held_out_class`` is a protocol rather than a set (train without one class, then ask whether its images
look unusual): see :func:`mcdrop.training.studies` and BENCHMARKS.md.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PROXIES", "centre_mnist_style", "characters", "digits", "make_proxy"]

PROXIES = ("digits", "characters", "flip", "rotate", "invert", "noise")


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import torch

    t = torch.as_tensor(image, dtype=torch.float32)[None, None]
    return torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False,
                                           antialias=True)[0, 0].numpy()


def centre_mnist_style(image: np.ndarray) -> np.ndarray:
    """Crop to the ink, fit in a 20x20 box keeping the aspect ratio, and centre by mass in 28x28 (MNIST's recipe)."""
    ys, xs = np.nonzero(image > 0.05 * image.max())
    if len(ys) == 0:
        return np.zeros((28, 28), np.float32)
    crop = image[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = crop.shape
    scale = 20.0 / max(h, w)
    small = np.clip(_resize(crop, (max(1, round(h * scale)), max(1, round(w * scale)))), 0, None)
    out = np.zeros((28, 28), np.float32)
    total = small.sum()
    cy, cx = ((np.indices(small.shape) * small).reshape(2, -1).sum(1) / total) if total > 0 else (h / 2, w / 2)
    top, left = round(14 - cy), round(14 - cx)
    top, left = min(max(top, 0), 28 - small.shape[0]), min(max(left, 0), 28 - small.shape[1])
    out[top:top + small.shape[0], left:left + small.shape[1]] = small
    return np.clip(out / max(out.max(), 1e-6), 0, 1)


def digits() -> np.ndarray:
    """scikit-learn's 1,797 handwritten digits (8x8, 0-16), upscaled to 20x20 and centred in 28x28."""
    from sklearn.datasets import load_digits

    images = load_digits().images / 16.0
    return np.stack([centre_mnist_style(_resize(im, (20, 20))) for im in images]).astype(np.float32)


def characters(n: int = 2000, seed: int = 0) -> np.ndarray:
    """``n`` letters and digits rendered with matplotlib's bundled fonts, randomly styled, centred MNIST-style."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rng = np.random.default_rng(seed)
    glyphs = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    families = ["DejaVu Sans", "DejaVu Serif", "DejaVu Sans Mono"]
    fig = Figure(figsize=(1, 1), dpi=64)
    canvas = FigureCanvasAgg(fig)
    out = []
    for _ in range(n):
        fig.clear()
        fig.patch.set_facecolor("black")
        fig.text(0.5, 0.5, glyphs[rng.integers(len(glyphs))], color="white", ha="center", va="center",
                 fontsize=float(rng.uniform(34, 46)), family=families[rng.integers(len(families))],
                 weight=["normal", "bold"][rng.integers(2)], style=["normal", "italic"][rng.integers(2)],
                 rotation=float(rng.uniform(-15, 15)))
        canvas.draw()
        image = np.asarray(canvas.buffer_rgba())[..., 0].astype(np.float32) / 255.0
        out.append(centre_mnist_style(image))
    return np.stack(out)


def make_proxy(name: str, test_images: np.ndarray | None = None, n: int = 2000, seed: int = 0) -> np.ndarray:
    """The proxy set ``name`` (``test_images``: Fashion-MNIST test images in [0, 1], for the derived sets)."""
    rng = np.random.default_rng(seed)
    if name == "digits":
        return digits()
    if name == "characters":
        return characters(n, seed)
    if name == "noise":
        return rng.uniform(size=(n, 28, 28)).astype(np.float32)
    if test_images is None:
        raise ValueError(f"the {name!r} proxy is made from Fashion-MNIST test images: pass test_images")
    images = np.asarray(test_images, dtype=np.float32).reshape(-1, 28, 28)[rng.permutation(len(test_images))[:n]]
    if name == "flip":
        return images[:, ::-1, :].copy()
    if name == "rotate":
        return np.rot90(images, 1, axes=(1, 2)).copy()
    if name == "invert":
        return 1.0 - images
    raise ValueError(f"unknown proxy {name!r}: expected one of {', '.join(PROXIES)}")
