"""Augmented views: the random-resized crop is the identity at full area and square ratio, stays inside the
image's value range (bilinear sampling of the image only), is reproducible from its generator, and is what
distill(crop=resized) asks function matching for."""
import torch

from slimkit.compress.recipe import parse_recipe
from slimkit.compress.views import random_views, resized_crops


def test_full_area_square_crop_is_the_identity():
    x = torch.randn(3, 2, 8, 8)
    y = resized_crops(x, torch.Generator().manual_seed(0), min_area=1.0, max_log_ratio=0.0)
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_resized_crops_stay_in_range_and_are_reproducible():
    x = torch.rand(16, 3, 12, 12)
    a = random_views(x, torch.Generator().manual_seed(3), "resized", True)
    b = random_views(x, torch.Generator().manual_seed(3), "resized", True)
    assert a.shape == x.shape and torch.equal(a, b)
    assert float(a.min()) >= float(x.min()) - 1e-6 and float(a.max()) <= float(x.max()) + 1e-6
    assert float((a - x).abs().mean()) > 0.01  # the crops changed the images


def test_a_crop_of_a_quarter_magnifies_twofold():
    """Area exactly 0.25, square: a half-width box stretched to the full width, so a horizontal ramp rises half
    as fast per pixel of the view."""
    ramp = torch.linspace(0, 1, 16).repeat(1, 1, 16, 1)
    y = resized_crops(ramp, torch.Generator().manual_seed(0), min_area=0.25, max_log_ratio=0.0, max_area=0.25)
    slope_in, slope_out = float((ramp[..., 1:] - ramp[..., :-1]).mean()), float((y[..., 5:10] - y[..., 4:9]).mean())
    assert abs(slope_out / slope_in - 0.5) < 1e-3


def test_distill_accepts_the_crop_option():
    (config,) = parse_recipe("distill(crop=resized)")
    assert config.crop == "resized"
