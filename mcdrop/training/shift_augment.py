"""Covariate-shift augmentation of square grey images: the kinds of change a deployed classifier meets (issue 22).

:func:`shift_augment` leaves each image of a batch as it is with probability ``1 - P_IMAGE`` (so the clean images
stay half the training set); the others get their own random draw of five independent changes, each applied with
probability ``P_APPLY``, in this order:

* an affine map: a rotation by an angle uniform on ``[-max_rotation, max_rotation]`` degrees (``MAX_ROTATION``
  by default), a zoom ``s`` with ``log s`` uniform on ``[log 0.7, log 1.35]`` and a translation of up to
  ``MAX_SHIFT`` pixels on each axis (bilinear resampling, zero fill);
* a Gaussian blur with ``sigma`` uniform on ``[0.5, 2]``;
* a contrast change ``x -> c x + (1 - c) mean(x)`` with ``c`` uniform on ``[0.25, 1]`` (torchvision's
  ``adjust_contrast``);
* an occluding black square of side 6 to 16 pixels, anywhere in the image;
* additive Gaussian noise with ``sigma`` uniform on ``[0, 0.3]``, then clipped to ``[0, 1]``.

All of it is batched tensor work (``affine_grid``/``grid_sample``, one grouped convolution for the blurs), drawn
from ``generator`` or the global RNG.  Shears, elastic distortions, pixelation and brightness (gamma) changes are
deliberately absent, so that an evaluation can hold kinds of shift out of training (:mod:`mcdrop.training.shifts`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["MAX_ROTATION", "MAX_SHIFT", "P_APPLY", "P_IMAGE", "affine", "blur", "contrast", "occlude", "shift_augment"]

P_IMAGE = 0.5
P_APPLY = 0.4
MAX_SHIFT = 5
MAX_ROTATION = 30.0
ZOOM = (0.7, 1.35)
BLUR_SIGMA = (0.5, 2.0)
CONTRAST = (0.25, 1.0)
OCCLUSION = (6, 16)
NOISE_SIGMA = 0.3
_BLUR_RADIUS = 5


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def affine(images: Tensor, zoom: Tensor, shift: Tensor, angle: Tensor | None = None) -> Tensor:
    """Each image rotated by ``angle`` degrees (counter-clockwise on screen; default 0) and zoomed by ``zoom`` about
    its centre, then moved by ``shift = (dx, dy)`` pixels (bilinear, zero fill): output pixel ``u`` samples the input
    at ``R(-angle) (u - t) / s`` about the centre. Shapes: ``(B, 1, H, W)``, ``(B,)``, ``(B, 2)``, ``(B,)``."""
    b, _, h, w = images.shape
    if angle is not None and h != w:
        raise ValueError(f"a rotation needs square images, but got {h}x{w}")
    a = torch.zeros(b) if angle is None else torch.deg2rad(angle.float())
    cos, sin = torch.cos(a) / zoom, torch.sin(a) / zoom
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin  # (x, y) with y pointing down: this turns the picture counter-clockwise
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    t = shift * 2 / torch.tensor([float(w), float(h)])  # in affine_grid's [-1, 1]
    theta[:, :, 2] = -torch.bmm(theta[:, :, :2], t.unsqueeze(2)).squeeze(2)
    grid = nn.functional.affine_grid(theta, [b, 1, h, w], align_corners=False)
    return nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def blur(images: Tensor, sigma: Tensor) -> Tensor:
    """Each image convolved with a separable Gaussian of its own ``sigma`` (0: unchanged), truncated at
    ``_BLUR_RADIUS`` pixels and normalised, zero padding. Shapes: ``(B, 1, H, W)``, ``(B,)``."""
    b, _, h, w = images.shape
    offsets = torch.arange(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=torch.float32)
    kernel = torch.exp(-offsets.square() / (2 * sigma.clamp(min=1e-6).view(b, 1).square()))
    kernel = kernel / kernel.sum(1, keepdim=True)
    flat = images.reshape(1, b, h, w)
    flat = nn.functional.conv2d(flat, kernel.view(b, 1, 1, -1), padding=(0, _BLUR_RADIUS), groups=b)
    flat = nn.functional.conv2d(flat, kernel.view(b, 1, -1, 1), padding=(_BLUR_RADIUS, 0), groups=b)
    return flat.reshape(b, 1, h, w)


def contrast(images: Tensor, c: Tensor) -> Tensor:
    """``c x + (1 - c) mean(x)`` per image. Shapes: ``(B, 1, H, W)``, ``(B,)``."""
    c = c.view(-1, 1, 1, 1)
    return c * images + (1 - c) * images.mean((1, 2, 3), keepdim=True)


def occlude(images: Tensor, top: Tensor, left: Tensor, size: Tensor) -> Tensor:
    """Each image with the ``size`` x ``size`` square at ``(top, left)`` set to 0 (size 0: none). Shapes:
    ``(B, 1, H, W)``, ``(B,)`` integers."""
    b, _, h, w = images.shape
    r, c = torch.arange(h).view(1, h), torch.arange(w).view(1, w)
    rows = (r >= top.view(b, 1)) & (r < (top + size).view(b, 1))
    cols = (c >= left.view(b, 1)) & (c < (left + size).view(b, 1))
    return images.masked_fill((rows.view(b, 1, h, 1) & cols.view(b, 1, 1, w)), 0.0)


def shift_augment(x: Tensor, generator: torch.Generator | None = None, max_rotation: float = MAX_ROTATION) -> Tensor:
    """Rows of square images in [0, 1], each changed as the module describes, with rotations up to
    ``max_rotation`` degrees (0: no rotation, and no angle drawn, so the random stream is that of the recipe
    before rotations were added). Shape: ``(B, H*W)`` -> ``(B, H*W)``."""
    b, pixels = x.shape
    side = math.isqrt(pixels)
    if side * side != pixels:
        raise ValueError(f"expected rows of square images, but a row has {pixels} values")
    images = x.reshape(b, 1, side, side)
    changed = torch.rand(b, generator=generator) < P_IMAGE

    def chosen() -> Tensor:
        return changed & (torch.rand(b, generator=generator) < P_APPLY)

    use = chosen()
    zoom = torch.exp(_uniform(b, math.log(ZOOM[0]), math.log(ZOOM[1]), generator))
    shift = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (b, 2), generator=generator).float()
    angle = _uniform(b, -max_rotation, max_rotation, generator) if max_rotation else None
    images = torch.where(use.view(b, 1, 1, 1), affine(images, zoom, shift, angle), images)
    use = chosen()
    images = torch.where(use.view(b, 1, 1, 1), blur(images, _uniform(b, *BLUR_SIGMA, generator)), images)
    images = contrast(images, torch.where(chosen(), _uniform(b, *CONTRAST, generator), 1.0))
    use = chosen()
    size = torch.where(use, torch.randint(OCCLUSION[0], OCCLUSION[1] + 1, (b,), generator=generator), 0)
    top = (torch.rand(b, generator=generator) * (side - size + 1)).long()
    left = (torch.rand(b, generator=generator) * (side - size + 1)).long()
    images = occlude(images, top, left, size)
    noise_sigma = torch.where(chosen(), NOISE_SIGMA * torch.rand(b, generator=generator), 0.0).view(b, 1, 1, 1)
    images = images + noise_sigma * torch.randn(images.shape, generator=generator)
    return images.clamp(0, 1).reshape(b, pixels)
