"""Batch augmentation: shapes, identity at zero magnitude, seeds, flips, hand-worked warps."""

from __future__ import annotations

import math

import pytest
import torch

from cxrlab.config import AugmentConfig
from cxrlab.train.augment import AffineParams, BatchAugment, mixup, mixup_weight, normalize

OFF = dict(
    rotation_deg=0.0, hflip=False, scale_min=1.0, scale_max=1.0, translate=0.0,
    brightness=0.0, contrast=0.0,
)  # fmt: skip


def _batch(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, size, size), generator=gen, dtype=torch.uint8)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_normalize_hand_worked_values():
    x = torch.tensor([0, 255, 51], dtype=torch.uint8).reshape(1, 1, 1, 3)
    out = normalize(x, [0.5], [0.5])
    assert out.dtype == torch.float32
    assert torch.allclose(out.flatten(), torch.tensor([-1.0, 1.0, -0.6]), atol=1e-6)


def test_output_shape_dtype_and_device():
    x = _batch(5, 24)
    out = BatchAugment(AugmentConfig(), [0.449], [0.226])(x, _gen(0))
    assert out.shape == (5, 1, 24, 24)
    assert out.dtype == torch.float32
    assert out.device == x.device
    assert torch.isfinite(out).all()


def test_identity_when_all_magnitudes_are_zero():
    x = _batch()
    augment = BatchAugment(AugmentConfig(**OFF), [0.5], [0.5])
    assert not augment.has_geometry
    assert torch.equal(augment(x, _gen(3)), normalize(x, [0.5], [0.5]))


def test_same_seed_same_output_other_seed_differs():
    x = _batch()
    augment = BatchAugment(AugmentConfig(), [0.5], [0.5])
    first, again, other = augment(x, _gen(1)), augment(x, _gen(1)), augment(x, _gen(2))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert not torch.allclose(first, normalize(x, [0.5], [0.5]))  # it does augment


def test_flip_is_off_by_default():
    assert AugmentConfig().hflip is False
    params = BatchAugment(AugmentConfig(), [0.5], [0.5]).sample(500, _gen(0))
    assert not params.flip.any()


def test_flip_only_mirrors_exactly_the_flipped_images():
    x = _batch(8)
    augment = BatchAugment(AugmentConfig(**{**OFF, "hflip": True}), [0.5], [0.5])
    flips = augment.sample(8, _gen(5)).flip
    assert 0 < int(flips.sum()) < 8  # this seed flips some, not all
    out = augment(x, _gen(5))
    expected = normalize(x, [0.5], [0.5])
    expected[flips] = expected[flips].flip(-1)
    assert torch.allclose(out, expected, atol=1e-5)


def test_theta_hand_worked():
    one = torch.ones(1)
    zoom2 = AffineParams(0 * one, 2 * one, 0 * one, 0 * one, torch.zeros(1, dtype=bool))
    assert torch.allclose(zoom2.theta(), torch.tensor([[[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]]))
    quarter = AffineParams(math.pi / 2 * one, one, 0.1 * one, 0 * one, torch.ones(1, dtype=bool))
    expected = torch.tensor([[[0.0, -1.0, 0.2], [-1.0, 0.0, 0.0]]])
    assert torch.allclose(quarter.theta(), expected, atol=1e-6)


def test_shift_by_a_quarter_moves_pixels_by_a_quarter_of_the_side():
    x = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    x[..., 3, 3] = 255
    augment = BatchAugment(AugmentConfig(**OFF), [0.0], [1.0])
    params = AffineParams(torch.zeros(1), torch.ones(1), torch.full((1,), 0.25), torch.zeros(1),
                          torch.zeros(1, dtype=bool))  # fmt: skip
    augment.sample = lambda n, generator=None: params  # a fixed draw
    augment.config = AugmentConfig(**{**OFF, "translate": 0.25})
    out = augment(x, _gen(0))
    # output(i, j) samples input(i, j + 2): the bright pixel moves from column 3 to 1
    assert out[0, 0, 3, 1] == pytest.approx(1.0)
    assert out.sum() == pytest.approx(1.0)


def test_contrast_keeps_each_image_mean_and_brightness_shifts_within_range():
    x = _batch(6)
    base = normalize(x, [0.5], [0.5])
    contrast = BatchAugment(AugmentConfig(**{**OFF, "contrast": 0.5}), [0.5], [0.5])(x, _gen(0))
    assert torch.allclose(contrast.mean(dim=(1, 2, 3)), base.mean(dim=(1, 2, 3)), atol=1e-5)
    assert not torch.allclose(contrast, base)
    bright = BatchAugment(AugmentConfig(**{**OFF, "brightness": 0.2}), [0.5], [0.5])(x, _gen(0))
    shift = (bright - base).flatten(1)  # (B, S*S): one constant per image
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-5)
    assert (shift.abs() <= 0.2 + 1e-6).all()


def test_rejects_float_input():
    with pytest.raises(ValueError, match="uint8"):
        BatchAugment(AugmentConfig(), [0.5], [0.5])(torch.zeros(1, 1, 8, 8))


# ---- mixup -------------------------------------------------------------------------------------
def _labels(n: int = 6, k: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 2, (n, k), generator=_gen(seed)).float()


def test_mixup_off_returns_the_batch_unchanged():
    x, y = torch.randn(6, 1, 8, 8), _labels()
    out_x, out_y = mixup(x, y, 0.0, _gen(0))
    assert out_x is x and out_y is y


def test_mixup_blends_images_and_labels_with_one_weight_and_one_pairing():
    x, y = torch.randn(6, 1, 8, 8, dtype=torch.float64), _labels().double()
    out_x, out_y = mixup(x, y, 0.4, _gen(3))
    replay = _gen(3)  # the same draws, in mixup's order: the weight, then the pairing
    lam = mixup_weight(0.4, replay)
    perm = torch.randperm(6, generator=replay)
    assert 0.0 < lam < 1.0
    torch.testing.assert_close(out_x, lam * x + (1 - lam) * x[perm])
    torch.testing.assert_close(out_y, lam * y + (1 - lam) * y[perm])
    assert ((out_y >= 0) & (out_y <= 1)).all()  # soft labels stay probabilities
    assert not torch.equal(perm, torch.arange(6))  # the test checks a real pairing


def test_mixup_weight_follows_beta_alpha_alpha():
    from scipy.stats import beta, kstest

    gen = _gen(0)
    for alpha in (0.2, 1.0):
        draws = [mixup_weight(alpha, gen) for _ in range(2000)]
        assert kstest(draws, beta(alpha, alpha).cdf).pvalue > 0.01
    assert kstest(draws, beta(0.2, 0.2).cdf).pvalue < 1e-6  # the test can tell them apart


def test_mixup_same_seed_same_output():
    x, y = torch.randn(6, 1, 8, 8), _labels()
    a, b, c = mixup(x, y, 1.0, _gen(1)), mixup(x, y, 1.0, _gen(1)), mixup(x, y, 1.0, _gen(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
