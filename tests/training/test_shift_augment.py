"""The covariate-shift augmentation: each change against its known answer, and how often the changes happen."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from scipy import stats

from mcdrop.training import shift_augment as S
from tests.conftest import ALPHA


def dot(side: int = 28, at: tuple[int, int] = (10, 12)) -> torch.Tensor:
    image = torch.zeros(1, 1, side, side)
    image[0, 0, at[0], at[1]] = 1.0
    return image


@pytest.mark.parametrize(("dx", "dy"), [(0, 0), (5, -3), (-5, 5)])
def test_affine_moves_by_whole_pixels_exactly(dx, dy):
    out = S.affine(dot(), torch.ones(1), torch.tensor([[float(dx), float(dy)]]))
    want = torch.zeros_like(out)
    want[0, 0, 10 + dy, 12 + dx] = 1.0
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)


def test_affine_zoom_scales_distances_from_the_centre():
    """A dot 6 pixels right of the centre (pixel centres at 13.5) lands 6 s pixels right of it: its intensity-weighted
    column is 13.5 + 6 s (bilinear resampling keeps the centroid of a dot that stays inside)."""
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 13:15, 19:21] = 1.0  # a 2x2 dot centred at column 19.5
    for s in (0.7, 1.3):
        out = S.affine(image, torch.tensor([s]), torch.zeros(1, 2))[0, 0]
        col = float((out.sum(0) * torch.arange(28)).sum() / out.sum())
        assert col == pytest.approx(13.5 + 6 * s, abs=0.05)


@pytest.mark.parametrize("angle", [30.0, -17.5, 90.0])
def test_affine_rotation_is_torchvisions_rotate(angle):
    """With zoom 1 and no shift, the rotation equals torchvision's bilinear ``rotate`` (counter-clockwise on screen)."""
    images = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    out = S.affine(images, torch.ones(2), torch.zeros(2, 2), torch.full((2,), angle))
    want = TF.rotate(images, angle, interpolation=TF.InterpolationMode.BILINEAR)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5)


def test_affine_rotates_and_zooms_about_the_centre_then_shifts():
    """A 2x2 dot 6 pixels right of the centre, turned by a, zoomed by s and moved by (dx, dy), has its centroid at
    centre + s * 6 (cos a, -sin a) + (dx, dy) in (column, row) pixels."""
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 13:15, 19:21] = 1.0
    a, s, dx, dy = 25.0, 1.2, 2.0, -3.0
    out = S.affine(image, torch.tensor([s]), torch.tensor([[dx, dy]]), torch.tensor([a]))[0, 0]
    col = float((out.sum(0) * torch.arange(28)).sum() / out.sum())
    row = float((out.sum(1) * torch.arange(28)).sum() / out.sum())
    rad = torch.deg2rad(torch.tensor(a))
    assert col == pytest.approx(13.5 + s * 6 * float(torch.cos(rad)) + dx, abs=0.05)
    assert row == pytest.approx(13.5 - s * 6 * float(torch.sin(rad)) + dy, abs=0.05)


def test_blur_is_torchvisions_gaussian_blur_inside_the_image():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, 28, 28, generator=g)
    sigma = torch.tensor([0.5, 1.2, 2.0])
    out = S.blur(images, sigma)
    for i in range(3):
        want = TF.gaussian_blur(images[i], kernel_size=[11, 11], sigma=[float(sigma[i])] * 2)  # reflect padding
        torch.testing.assert_close(out[i, :, 5:-5, 5:-5], want[:, 5:-5, 5:-5], rtol=0, atol=1e-5)


def test_contrast_keeps_the_mean_and_scales_the_spread():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 1, 28, 28, generator=g)
    c = torch.tensor([1.0, 0.5, 0.25, 0.0])
    out = S.contrast(images, c)
    torch.testing.assert_close(out.mean((1, 2, 3)), images.mean((1, 2, 3)))
    torch.testing.assert_close(out.std((1, 2, 3)), c * images.std((1, 2, 3)))


def test_occlude_blanks_exactly_the_square():
    images = torch.ones(2, 1, 28, 28)
    out = S.occlude(images, torch.tensor([3, 20]), torch.tensor([4, 22]), torch.tensor([10, 0]))
    assert float(out[0].sum()) == 784 - 100 and float(out[0, 0, 3:13, 4:14].sum()) == 0.0
    assert torch.equal(out[1], images[1])  # size 0: no square


def test_shift_augment_changes_the_drawn_share_of_images():
    """A row is untouched with probability (1 - P_IMAGE) + P_IMAGE (1 - P_APPLY)^5 (binomial test); the output stays
    in [0, 1] with the input's shape; the same generator seed gives the same batch."""
    n = 4000
    x = torch.rand(n, 784, generator=torch.Generator().manual_seed(2))
    out = S.shift_augment(x, torch.Generator().manual_seed(3))
    assert out.shape == x.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    untouched = int((out == x).all(1).sum())
    p = (1 - S.P_IMAGE) + S.P_IMAGE * (1 - S.P_APPLY) ** 5
    assert stats.binomtest(untouched, n, p).pvalue > ALPHA
    assert torch.equal(out, S.shift_augment(x, torch.Generator().manual_seed(3)))


def test_without_rotation_the_affine_change_is_zoom_and_whole_pixel_shift_only():
    """``max_rotation=0`` (version 1's recipe) draws no angle: a one-pixel dot at the centre moved by a whole-pixel
    shift and zoomed about it stays on its row or column axis in every augmented image, which no rotation keeps."""
    n = 400
    x = torch.zeros(n, 28, 28)
    x[:, 13:15, 13:15] = 1.0
    x[:, 13:15, 20] = 1.0  # an arm to the right of the centre: a rotation would move it off the dot's rows
    out = S.shift_augment(x.reshape(n, -1), torch.Generator().manual_seed(5), max_rotation=0.0).reshape(n, 28, 28)
    rotated = S.shift_augment(x.reshape(n, -1), torch.Generator().manual_seed(5), max_rotation=30.0).reshape(n, 28, 28)

    def tilt(images):  # |row of the arm's centroid - row of the blob's|, where both survive occlusion and noise
        rows = torch.arange(28.0)
        left, right = images[:, :, :17], images[:, :, 17:]
        return ((left.sum(2) * rows).sum(1) / left.sum((1, 2)) - (right.sum(2) * rows).sum(1) / right.sum((1, 2))).abs()

    moved = ~torch.isclose(out, x).all(2).all(1)
    assert moved.sum() > 50  # the comparison is not vacuous
    assert float(tilt(out).nanquantile(0.5)) < 0.5 < float(tilt(rotated).nanquantile(0.9))


def test_shift_augment_refuses_rows_that_are_not_square_images():
    with pytest.raises(ValueError, match="square images"):
        S.shift_augment(torch.zeros(2, 10))
