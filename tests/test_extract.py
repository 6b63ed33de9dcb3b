"""Pooling, networks, image loading/cropping/resizing and descriptor extraction (cirtorch's recipe)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image
from torch import nn

from csa_rerank import extract, networks
from csa_rerank.extract import ImageReadError, extract_descriptors, load_image, multiscale_descriptor
from csa_rerank.networks import (
    RMAC,
    GeM,
    RetrievalNet,
    body_state_dict,
    build_network,
    gem,
    l2n,
    load_body_checkpoint,
    load_cirtorch_network,
    mac,
    rmac,
    rmac_regions,
    safe_torch_load,
    spoc,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# ----------------------------------------------------------------------------------------------------------------
# pooling and normalisation


def test_gem_by_hand():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64)  # [1, 1, 2, 2]
    # p = 1: the mean (1 + 2 + 3 + 4)/4 = 2.5
    assert gem(x, p=1.0).item() == pytest.approx(2.5, abs=1e-12)
    # p = 3: ((1 + 8 + 27 + 64)/4)^(1/3) = 25^(1/3)
    assert gem(x, p=3.0).item() == pytest.approx(25 ** (1 / 3), abs=1e-12)
    # large p approaches the max: p = 100 gives 4 * (1/4 * (1 + (3/4)^100 + ...))^(1/100) ~= 4 * 4^(-1/100)
    big = gem(x, p=100.0).item()
    assert big == pytest.approx(4 * 4 ** (-1 / 100), abs=1e-9)
    assert gem(x, p=10.0).item() < big < 4.0
    assert gem(x, p=300.0).item() == pytest.approx(4.0, abs=0.02)  # 4 * 4^(-1/300) = 3.98
    # the exponent may be a tensor of shape [1] (GeM's parameter)
    assert gem(x, p=torch.tensor([1.0], dtype=torch.float64)).item() == pytest.approx(2.5)


def test_gem_clamps_at_eps():
    # negatives and zeros become eps before the power
    x = torch.tensor([[[[-1.0, 0.0], [0.0, -5.0]]]], dtype=torch.float64)
    assert gem(x, p=3.0).item() == pytest.approx(1e-6, rel=1e-9)
    # p = 1 with one negative: mean(eps, 2) = (2 + 1e-6)/2
    x = torch.tensor([[[[-5.0, 2.0]]]], dtype=torch.float64)
    assert gem(x, p=1.0).item() == pytest.approx((2 + 1e-6) / 2, abs=1e-15)
    assert gem(x, p=1.0, eps=0.5).item() == pytest.approx(1.25, abs=1e-15)


def test_mac_and_spoc_by_hand_per_channel():
    x = torch.tensor(
        [
            [[[1.0, 5.0], [2.0, 0.0]], [[-1.0, -2.0], [-3.0, -4.0]]],
            [[[0.0, 0.0], [0.0, 8.0]], [[3.0, 3.0], [3.0, 3.0]]],
        ]
    )  # [B=2, D=2, 2, 2]
    assert mac(x).tolist() == [[5.0, -1.0], [8.0, 3.0]]
    assert spoc(x).tolist() == [[2.0, -2.5], [2.0, 3.0]]
    assert gem(x, p=1.0).shape == (2, 2)


def test_l2n():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    out = l2n(x)
    # cirtorch adds eps to the norm: 3 / (5 + 1e-6)
    assert out[0].tolist() == pytest.approx([3 / (5 + 1e-6), 4 / (5 + 1e-6)], abs=1e-15)
    assert out[1].tolist() == [0.0, 0.0]  # no NaN for a zero vector


# R-MAC: regions as (top, left, side), worked out by hand from the rules in rmac_regions' docstring.


def test_rmac_regions_of_a_square_map():
    # 3 x 3: no extra positions.  Level 1: side floor(2*3/2) = 3, the whole map.  Level 2: side floor(6/3) = 2 on a
    # 2 x 2 grid, starts 0 and 3 - 2 = 1.  Level 3: side floor(6/4) = 1 on a 3 x 3 grid, starts 0, 1, 2.
    level1 = [(0, 0, 3)]
    level2 = [(0, 0, 2), (0, 1, 2), (1, 0, 2), (1, 1, 2)]
    level3 = [(t, x, 1) for t in range(3) for x in range(3)]
    assert rmac_regions(3, 3) == level1 + level2 + level3
    assert rmac_regions(3, 3, levels=2) == level1 + level2
    # 1 x 1: level 1 is the pixel; levels 2 and 3 have side floor(2/3) = floor(2/4) = 0 and are skipped
    assert rmac_regions(1, 1) == [(0, 0, 1)]


def test_rmac_regions_of_a_landscape_and_a_portrait_map():
    # 2 x 3: min 2, max 3.  s regions of side 2 along the width overlap by 1 - (3-2)/((s-1)*2): 0.5 for s = 2,
    # 0.75 for s = 3, ... -> s = 2 is closest to 0.4: one extra position along the width.
    # Level 1: side 2; tops [0]; lefts: 2 positions, spacing (3-2)/1 = 1 -> [0, 1].
    # Level 2: side floor(4/3) = 1; tops: 2 positions, spacing 1 -> [0, 1]; lefts: 3 positions -> [0, 1, 2].
    # Level 3: side 1; tops: 3 positions, spacing (2-1)/2 = 0.5 -> floor(0, 0.5, 1) = [0, 0, 1];
    #          lefts: 4 positions, spacing 2/3 -> floor(0, 0.67, 1.33, 2) = [0, 0, 1, 2] (duplicates are kept).
    expected = [(0, 0, 2), (0, 1, 2)]
    expected += [(t, x, 1) for t in (0, 1) for x in (0, 1, 2)]
    expected += [(t, x, 1) for t in (0, 0, 1) for x in (0, 0, 1, 2)]
    assert rmac_regions(2, 3) == expected
    # a portrait map gets the transposed layout
    assert sorted(rmac_regions(3, 2)) == sorted((x, t, side) for t, x, side in expected)


def test_rmac_regions_of_a_realistic_map():
    # a 1024 x 768 image gives a 32 x 24 ResNet map (W x H): s = 2 (overlap 1 - 8/24 = 0.67; s = 3 gives 0.83)
    regions = rmac_regions(24, 32)
    by_level = {side: [(t, x) for t, x, sd in regions if sd == side] for side in (24, 16, 12)}
    assert len(regions) == 2 + 6 + 12
    assert by_level[24] == [(0, 0), (0, 8)]
    assert by_level[16] == [(t, x) for t in (0, 8) for x in (0, 8, 16)]
    # level 3: side 12, lefts spaced (32 - 12)/3 = 6.67 and rounded down: 0, 6, 13, 20
    assert by_level[12] == [(t, x) for t in (0, 6, 12) for x in (0, 6, 13, 20)]
    # every region lies inside the map
    assert all(t + sd <= 24 and x + sd <= 32 for t, x, sd in regions)


def test_rmac_regions_break_ties_in_float32_as_cirtorch():
    # 5 x 9: s = 2 and s = 3 tie exactly (overlaps 1 - 4/5 = 0.2 and 1 - 2/5 = 0.6, both 0.2 from 0.4); cirtorch's
    # float32 arithmetic keeps s = 2 (float64 would pick 3): two level-1 regions of side 5, at 0 and 9 - 5 = 4
    assert [r for r in rmac_regions(5, 9) if r[2] == 5] == [(0, 0, 5), (0, 4, 5)]


def _l2(v):
    v = np.asarray(v, dtype=np.float64)
    return v / (np.linalg.norm(v) + 1e-6)


def test_rmac_by_hand_on_a_square_map():
    # channel 0 is 3 at (0, 0), channel 1 is 4 at (1, 1), zeros elsewhere
    x = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    x[0, 0, 0, 0], x[0, 1, 1, 1] = 3.0, 4.0
    # global MAC (3, 4) -> (0.6, 0.8); level 1 (the whole map) again (0.6, 0.8);
    # level 2: [0:2, 0:2] sees both -> (0.6, 0.8); the three others see only (1, 1) -> (0, 1) each;
    # level 3: pixel (0, 0) -> (1, 0), pixel (1, 1) -> (0, 1), the seven others are zero (and stay zero).
    # Sum: 3 x (0.6, 0.8) + 3 x (0, 1) + (1, 0) + (0, 1) = (2.8, 6.4)
    assert rmac(x)[0].tolist() == pytest.approx([2.8, 6.4], abs=1e-5)
    # the same sum written with cirtorch's eps in every normalisation
    expected = 3 * _l2([3, 4]) + 3 * _l2([0, 4]) + _l2([3, 0]) + _l2([0, 4])
    np.testing.assert_allclose(rmac(x)[0].numpy(), expected, rtol=0, atol=1e-12)


def test_rmac_by_hand_on_non_square_maps():
    # 2 x 3 map: channel 0 is 3 at (0, 0), channel 1 is 4 at (0, 2)
    x = torch.zeros(1, 2, 2, 3, dtype=torch.float64)
    x[0, 0, 0, 0], x[0, 1, 0, 2] = 3.0, 4.0
    # global (0.6, 0.8); level 1: columns 0-1 -> (1, 0), columns 1-2 -> (0, 1);
    # level 2 (six pixels): (0, 0) -> (1, 0), (0, 2) -> (0, 1);
    # level 3: tops [0, 0, 1] x lefts [0, 0, 1, 2]: pixel (0, 0) 2 x 2 = 4 times, pixel (0, 2) 2 x 1 = 2 times.
    # Sum: (0.6 + 1 + 1 + 4, 0.8 + 1 + 1 + 2) = (6.6, 4.8)
    assert rmac(x)[0].tolist() == pytest.approx([6.6, 4.8], abs=1e-5)
    # the transposed (portrait) map has the transposed regions: the same descriptor
    torch.testing.assert_close(rmac(x.transpose(-1, -2).contiguous()), rmac(x))
    # every image of a batch is pooled on its own
    batch = torch.cat([x, torch.zeros_like(x), 2 * x])
    out = rmac(batch)
    torch.testing.assert_close(out[0], rmac(x)[0])
    assert out[1].abs().max() == 0
    torch.testing.assert_close(out[2], out[0], rtol=0, atol=1e-5)  # scale-invariant up to eps: terms are unit


def test_rmac_module_and_network():
    pool = RMAC()
    assert repr(pool) == "RMAC(levels=3, overlap=0.4, eps=1e-06)" and not list(pool.parameters())
    x = torch.rand(2, 4, 5, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(pool(x), rmac(x))
    net = _tiny_net(RMAC())
    images = torch.randn(2, 3, 6, 9, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(net(images), l2n(rmac(net.features(images))))
    assert extract.multiscale_power(net) == 1.0  # cirtorch: msp = p only for GeM


def test_gem_module():
    pool = GeM(p=3.0)
    assert repr(pool) == "GeM(p=3.0000, eps=1e-06)"
    assert [name for name, _ in pool.named_parameters()] == ["p"]
    assert pool.p.shape == (1,) and pool.p.requires_grad
    x = torch.rand(2, 3, 4, 5) + 0.1
    out = pool(x)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out, gem(x, p=3.0))
    out.sum().backward()
    assert pool.p.grad is not None and pool.p.grad.shape == (1,)


# ----------------------------------------------------------------------------------------------------------------
# a tiny fake network and an independent numpy forward pass

_W = np.array([[0.5, -0.2, 0.3], [0.1, 0.4, -0.6], [-0.3, 0.2, 0.8], [0.7, 0.7, 0.1]])
_B = np.array([0.1, 0.0, 0.2, -0.1])


def _tiny_net(pool: nn.Module | None = None) -> RetrievalNet:
    conv = nn.Conv2d(3, 4, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(_W, dtype=torch.float32)[:, :, None, None])
        conv.bias.copy_(torch.tensor(_B, dtype=torch.float32))
    return RetrievalNet(nn.Sequential(conv, nn.ReLU()), pool or GeM(3.0), dim=4).eval()


def _np_net(x: np.ndarray, p: float = 3.0) -> np.ndarray:
    """[B, 3, H, W] -> [B, 4]: 1x1 conv, ReLU, GeM(p), cirtorch L2N; in float64."""
    y = np.einsum("oc,bchw->bohw", _W, x) + _B[None, :, None, None]
    y = np.maximum(y, 0.0)
    v = (np.maximum(y, 1e-6) ** p).mean(axis=(2, 3)) ** (1 / p)
    return v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-6)


def _np_downscale(x: np.ndarray, n: int) -> np.ndarray:
    """Bilinear resize by 1/n (n even), align_corners=False: output i samples input n*i + (n-1)/2, i.e. the
    average of input pixels n*i + n/2 - 1 and n*i + n/2 along each axis."""
    a = x[..., n // 2 - 1 :: n, :] * 0.5 + x[..., n // 2 :: n, :] * 0.5
    return a[..., n // 2 - 1 :: n] * 0.5 + a[..., n // 2 :: n] * 0.5


def _np_image_tensor(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float64).transpose(2, 0, 1) / 255.0
    mean = np.array(extract.IMAGENET_MEAN)[:, None, None]
    std = np.array(extract.IMAGENET_STD)[:, None, None]
    return (arr - mean) / std


def test_tiny_net_matches_numpy():
    x = torch.randn(2, 3, 6, 8, generator=torch.Generator().manual_seed(0))
    out = _tiny_net()(x)
    np.testing.assert_allclose(out.detach().numpy(), _np_net(x.double().numpy()), atol=1e-6)
    np.testing.assert_allclose(torch.linalg.vector_norm(out, dim=1).detach().numpy(), 1.0, atol=1e-5)


def test_whitened_forward_is_l2n_linear_l2n():
    net = _tiny_net()
    net.whiten = nn.Linear(4, 4)
    x = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        v = _np_net(x.double().numpy())
        w = v @ net.whiten.weight.double().numpy().T + net.whiten.bias.double().numpy()
        expected = w / (np.linalg.norm(w, axis=1, keepdims=True) + 1e-6)
        np.testing.assert_allclose(net(x).numpy(), expected, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# multi-scale descriptors


def test_numpy_downscale_helper_is_torch_bilinear():
    x = torch.randn(1, 3, 8, 12, generator=torch.Generator().manual_seed(2))
    for n in (2, 4):
        ref = torch.nn.functional.interpolate(x, scale_factor=1 / n, mode="bilinear", align_corners=False)
        np.testing.assert_allclose(_np_downscale(x.numpy(), n), ref.numpy(), atol=1e-6)


@pytest.mark.parametrize("msp", [1.0, 3.0])
def test_multiscale_descriptor_is_the_renormalised_power_mean(msp):
    x = torch.randn(2, 3, 8, 12, generator=torch.Generator().manual_seed(3))
    out = multiscale_descriptor(_tiny_net(), x, scales=(1.0, 0.5, 0.25), msp=msp)
    xn = x.double().numpy()
    per_scale = [_np_net(xn), _np_net(_np_downscale(xn, 2)), _np_net(_np_downscale(xn, 4))]
    # v = (mean_s v_s^msp)^(1/msp), then L2N
    v = (sum(d**msp for d in per_scale) / 3) ** (1 / msp)
    expected = v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)
    if msp == 3.0:  # the power mean is not the plain mean
        plain = sum(per_scale) / 3
        plain /= np.linalg.norm(plain, axis=1, keepdims=True)
        assert np.abs(out.numpy() - plain).max() > 1e-4


def test_single_scale_descriptor_is_the_network_output():
    x = torch.randn(1, 3, 5, 7, generator=torch.Generator().manual_seed(4))
    net = _tiny_net()
    torch.testing.assert_close(multiscale_descriptor(net, x, (1.0,), 1.0), l2n(net(x).detach()))


def test_multiscale_power_rule():
    # GeM without whitening -> its p; with whitening -> 1; other poolings -> 1
    assert extract.multiscale_power(_tiny_net(GeM(2.5))) == pytest.approx(2.5)
    whitened = _tiny_net(GeM(2.5))
    whitened.whiten = nn.Linear(4, 4)
    assert extract.multiscale_power(whitened) == 1.0
    assert extract.multiscale_power(_tiny_net(networks.MAC())) == 1.0
    assert extract.multiscale_power(_tiny_net(networks.SPoC())) == 1.0


# ----------------------------------------------------------------------------------------------------------------
# image loading, cropping and shrinking


def _write_image(path, width, height, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    "size, image_size, expected",
    [
        ((300, 200), 150, (150, 100)),  # landscape: the long side becomes 150, aspect kept
        ((300, 200), 300, (300, 200)),  # already that size
        ((300, 200), 1000, (300, 200)),  # never enlarged
        ((120, 240), 60, (30, 60)),  # portrait
        ((333, 200), 100, (100, 60)),  # 200 * 100/333 = 60.06 -> 60
    ],
)
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_load_image_shrinks_the_longest_side(tmp_path, size, image_size, expected, suffix):
    path = _write_image(tmp_path / f"img{suffix}", *size)
    img = load_image(path, image_size)
    assert img.mode == "RGB"
    assert img.size == expected


def test_load_image_converts_grey_and_rgba_to_rgb(tmp_path):
    Image.new("L", (20, 10), 128).save(tmp_path / "grey.png")
    Image.new("RGBA", (20, 10), (10, 20, 30, 40)).save(tmp_path / "rgba.png")
    assert load_image(tmp_path / "grey.png", 100).mode == "RGB"
    assert np.asarray(load_image(tmp_path / "rgba.png", 100))[0, 0].tolist() == [10, 20, 30]


@pytest.mark.parametrize(
    "bbx, image_size, expected",
    [
        # 400 x 300 image (full = 400); crop 200 x 200
        ((100, 50, 300, 250), 100, (50, 50)),  # target = 100 * 200/400 = 50
        ((100, 50, 300, 250), 300, (150, 150)),  # target = 300 * 200/400 = 150
        ((100, 50, 300, 250), 1000, (200, 200)),  # target 500 > 200: not enlarged
        ((0, 0, 400, 100), 200, (200, 50)),  # crop 400 x 100, target = 200 * 400/400 = 200
        ((50, 0, 150, 300), 200, (50, 150)),  # crop 100 x 300, target = 200 * 300/400 = 150
        ((10.4, 20.6, 110.4, 70.6), 400, (100, 50)),  # PIL rounds to (10, 21, 110, 71): 100 x 50, target 100
    ],
)
def test_query_crop_is_shrunk_with_the_full_image_scale(tmp_path, bbx, image_size, expected):
    path = _write_image(tmp_path / "q.png", 400, 300)
    assert load_image(path, image_size, bbx).size == expected


def test_query_crop_content(tmp_path):
    path = _write_image(tmp_path / "q.png", 400, 300, seed=5)
    original = np.asarray(Image.open(path).convert("RGB"))
    # no shrinking (target = 400 * 100/400 = 100 = crop width): the pixels are the rounded box
    np.testing.assert_array_equal(np.asarray(load_image(path, 400, (10.4, 20.6, 110.4, 70.6))), original[21:71, 10:110])
    # shrinking by 2 (target 50): LANCZOS thumbnail of that crop
    expected = Image.fromarray(original[21:71, 10:110])
    expected.thumbnail((50, 50), Image.Resampling.LANCZOS, reducing_gap=None)
    np.testing.assert_array_equal(np.asarray(load_image(path, 200, (10.4, 20.6, 110.4, 70.6))), np.asarray(expected))


def test_unreadable_images_raise_image_read_error_naming_the_file(tmp_path):
    good = _write_image(tmp_path / "good.jpg", 64, 48)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"<html>not an image</html>")
    for path in (truncated, garbage, tmp_path / "missing.jpg"):
        with pytest.raises(ImageReadError, match=path.name) as info:
            load_image(path, 32)
        assert str(path) in str(info.value)


# ----------------------------------------------------------------------------------------------------------------
# extract_descriptors


@pytest.fixture
def mixed_images(tmp_path):
    sizes = [(16, 12), (12, 16), (16, 12), (8, 8), (16, 12), (12, 16), (20, 10)]
    return [_write_image(tmp_path / f"im{i}.png", w, h, seed=i) for i, (w, h) in enumerate(sizes)]


def _independent_descriptor(path, image_size, scales=(1.0,), msp=1.0, bbx=None):
    img = Image.open(path).convert("RGB")
    full = max(img.size)
    target = image_size
    if bbx is not None:
        img = img.crop(bbx)
        target = image_size * max(img.size) / full
    img.thumbnail((target, target), Image.Resampling.LANCZOS, reducing_gap=None)
    x = _np_image_tensor(img)[None]
    per_scale = [_np_net(x if s == 1 else _np_downscale(x, round(1 / s))) for s in scales]
    v = (sum(d**msp for d in per_scale) / len(per_scale)) ** (1 / msp)
    return (v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-6))[0]


def test_extract_descriptors_batching_and_row_order(mixed_images):
    net = _tiny_net()
    one = extract_descriptors(net, mixed_images, image_size=64, batch_size=1)
    four = extract_descriptors(net, mixed_images, image_size=64, batch_size=4)
    assert one.shape == (7, 4) and one.dtype == np.float32
    np.testing.assert_allclose(four, one, atol=1e-5)
    for i, path in enumerate(mixed_images):
        np.testing.assert_allclose(one[i], _independent_descriptor(path, 64), atol=1e-5)
    # the images differ, so a row permutation would be caught
    assert np.abs(one[0] - one[2]).max() > 1e-3 and np.abs(one[1] - one[5]).max() > 1e-3


def test_extract_descriptors_multiscale_with_shrinking_and_crops(mixed_images):
    net = _tiny_net()
    # crops of the 16 x 12, 12 x 16, 8 x 8 and 20 x 10 images; the last one is shrunk (target 16 * 20/20 = 16 -> 16 x 6)
    bbxs = [
        (0, 0, 12, 8),
        (2, 2, 10, 14),
        (4, 0, 16, 12),
        (0, 0, 8, 8),
        (1.4, 1.6, 13.4, 9.6),
        (0, 4, 12, 16),
        (0, 0, 20, 8),
    ]
    kwargs = dict(image_size=16, scales=(1.0, 0.5), msp=3.0, bbxs=bbxs)
    one = extract_descriptors(net, mixed_images, batch_size=1, **kwargs)
    three = extract_descriptors(net, mixed_images, batch_size=3, **kwargs)
    np.testing.assert_allclose(three, one, atol=1e-5)
    for i, path in enumerate(mixed_images):
        np.testing.assert_allclose(one[i], _independent_descriptor(path, 16, (1.0, 0.5), 3.0, bbxs[i]), atol=1e-5)
    # whole images shrunk to 8 on the long side (16 x 12 -> 8 x 6, 20 x 10 -> 8 x 4, ...), two scales, msp = 1
    db = extract_descriptors(net, mixed_images, image_size=8, scales=(1.0, 0.5), batch_size=2)
    for i, path in enumerate(mixed_images):
        np.testing.assert_allclose(db[i], _independent_descriptor(path, 8, (1.0, 0.5), 1.0), atol=1e-5)


def test_extract_descriptors_with_worker_processes(mixed_images):
    net = _tiny_net()
    serial = extract_descriptors(net, mixed_images, image_size=64, batch_size=1)
    parallel = extract_descriptors(net, mixed_images, image_size=64, batch_size=2, num_workers=2)
    np.testing.assert_allclose(parallel, serial, atol=1e-5)


def test_extract_descriptors_rejects_box_count_mismatch(mixed_images):
    with pytest.raises(ValueError, match="7 images but 2 bounding boxes"):
        extract_descriptors(_tiny_net(), mixed_images, image_size=16, bbxs=[(0, 0, 1, 1)] * 2)


# ----------------------------------------------------------------------------------------------------------------
# real networks: construction, checkpoints, and real photos


@pytest.fixture(scope="module")
def resnet50_seed0():
    return build_network("resnet50", "gem", seed=0).eval()


def test_build_network_is_reproducible_and_leaves_the_global_rng_alone(resnet50_seed0):
    torch.manual_seed(1234)
    expected_next = torch.rand(5)
    torch.manual_seed(1234)
    again = build_network("resnet50", "gem", seed=0)
    assert torch.equal(torch.rand(5), expected_next)  # the caller's random stream is untouched
    reference = resnet50_seed0.state_dict()
    assert again.state_dict().keys() == reference.keys()
    assert all(torch.equal(v, reference[k]) for k, v in again.state_dict().items())
    other = build_network("resnet50", "gem", seed=1).state_dict()
    assert not torch.equal(other["features.0.weight"], reference["features.0.weight"])
    # the layout of a cirtorch checkpoint
    assert "features.7.2.conv3.weight" in reference and reference["pool.p"].tolist() == [3.0]
    assert resnet50_seed0.dim == 2048 and resnet50_seed0.whiten is None


def test_build_network_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown architecture 'resnet18'"):
        build_network("resnet18")
    with pytest.raises(ValueError, match="unknown pooling 'crow'"):
        build_network("resnet50", "crow")


@pytest.fixture(scope="module")
def cirtorch_checkpoint(tmp_path_factory):
    """A checkpoint in cirtorch's layout: {'meta': ..., 'state_dict': ...} with pool.p and whiten.*."""
    net = build_network("resnet50", "gem", seed=0)
    with torch.no_grad():
        net.pool.p.fill_(2.75)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(9)
        net.whiten = nn.Linear(2048, 2048, bias=True)
    meta = {
        "architecture": "resnet50",
        "pooling": "gem",
        "local_whitening": False,
        "regional": False,
        "whitening": True,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "outputdim": 2048,
    }
    path = tmp_path_factory.mktemp("networks") / "gl18-tl-resnet50-gem-w-test.pth"
    torch.save({"meta": meta, "state_dict": net.state_dict()}, path)
    return path, net.eval(), meta


def test_load_cirtorch_network(cirtorch_checkpoint):
    path, original, meta = cirtorch_checkpoint
    net, loaded_meta = load_cirtorch_network(path, "resnet50", "gem", whitening=True)
    assert loaded_meta == meta
    assert net.pool.p.item() == pytest.approx(2.75)
    assert extract.multiscale_power(net) == 1.0  # whitened: plain mean over scales
    reference = original.state_dict()
    assert net.state_dict().keys() == reference.keys()
    assert all(torch.equal(v, reference[k]) for k, v in net.state_dict().items())
    assert torch.equal(net.whiten.bias, original.whiten.bias)
    x = torch.randn(1, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), original(x))


def test_load_cirtorch_network_rejects_a_mismatch(cirtorch_checkpoint):
    path, _, _ = cirtorch_checkpoint
    with pytest.raises(ValueError, match="architecture='resnet50' but the config says 'resnet101'") as info:
        load_cirtorch_network(path, "resnet101", "gem", whitening=True)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match="pooling='gem' but the config says 'mac'"):
        load_cirtorch_network(path, "resnet50", "mac", whitening=True)
    # the whitening layer in the file but not in the configured network
    with pytest.raises(ValueError, match=r"does not match resnet50/gem/whitening=False.*whiten\.bias") as info:
        load_cirtorch_network(path, "resnet50", "gem", whitening=False)
    assert str(path) in str(info.value)


def test_load_cirtorch_network_rejects_files_that_are_not_checkpoints(tmp_path):
    garbage = tmp_path / "truncated.pth"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(RuntimeError, match="truncated.pth: cannot load as a cirtorch checkpoint"):
        load_cirtorch_network(garbage, "resnet50")
    no_state = tmp_path / "meta_only.pth"
    torch.save({"meta": {"architecture": "resnet50"}}, no_state)
    with pytest.raises(RuntimeError, match="meta_only.pth: not a cirtorch checkpoint"):
        load_cirtorch_network(no_state, "resnet50")


# ----------------------------------------------------------------------------------------------------------------
# off-the-shelf networks: ImageNet bodies in cirtorch's and torchvision's layouts


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.items())


def test_body_checkpoint_in_cirtorchs_features_layout(tmp_path, resnet50_seed0):
    # imagenet-caffe-resnet101-features-10a101d.pth is the state_dict of cirtorch's net.features: "0.weight",
    # "1.running_mean", ..., "7.2.conv3.weight"; files of torch < 0.4.1 have no num_batches_tracked counters
    body = resnet50_seed0.features.state_dict()
    assert "0.weight" in body and "7.2.bn3.running_var" in body
    path = tmp_path / "imagenet-caffe-resnet50-features-test.pth"
    torch.save({k: v for k, v in body.items() if not k.endswith("num_batches_tracked")}, path)
    net = load_body_checkpoint(path, "resnet50", "rmac")
    assert isinstance(net.pool, RMAC) and net.whiten is None and net.dim == 2048
    loaded = {k: v for k, v in net.features.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert _same_weights(loaded, {k: v for k, v in body.items() if not k.endswith("num_batches_tracked")})
    x = torch.randn(1, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), l2n(rmac(resnet50_seed0.features(x))))
    # any pooling: GeM with the configured exponent
    gem_net = load_body_checkpoint(path, "resnet50", "gem", gem_p=3.0)
    assert gem_net.pool.p.item() == 3.0 and extract.multiscale_power(gem_net) == 3.0


def test_body_checkpoint_in_torchvisions_layout_and_from_a_cirtorch_checkpoint(tmp_path, cirtorch_checkpoint):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        tv = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50-torchvision.pth"
    torch.save(tv.state_dict(), path)  # conv1, bn1, layer1..4, fc
    net = load_body_checkpoint(path, "resnet50", "mac")
    assert torch.equal(net.features[0].weight, tv.conv1.weight)
    assert torch.equal(net.features[1].running_mean, tv.bn1.running_mean)
    assert torch.equal(net.features[7][2].conv3.weight, tv.layer4[2].conv3.weight)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    body = nn.Sequential(*list(tv.children())[:-2]).eval()
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), l2n(mac(body(x))))
    # a whole cirtorch checkpoint: its features.* make the body; its pool.p and whiten.* are not used
    ckpt_path, original, _ = cirtorch_checkpoint
    net = load_body_checkpoint(ckpt_path, "resnet50", "gem", gem_p=3.0)
    assert _same_weights(net.features.state_dict(), original.features.state_dict())
    assert net.pool.p.item() == 3.0 and net.whiten is None


def test_body_state_dict_key_layouts():
    t = torch.zeros(1)
    # VGG16: cirtorch's feature file is used as it is; torchvision's features.* lose the prefix, classifier goes
    assert body_state_dict({"0.weight": t, "28.bias": t}, "vgg16").keys() == {"0.weight", "28.bias"}
    tv_vgg = {"features.0.weight": t, "features.28.bias": t, "classifier.6.weight": t}
    assert body_state_dict(tv_vgg, "vgg16").keys() == {"0.weight", "28.bias"}
    # ResNet: torchvision's children by name -> their index in the body
    tv_resnet = {"conv1.weight": t, "bn1.running_var": t, "layer1.0.conv1.weight": t, "layer4.2.bn3.bias": t,
                 "fc.weight": t, "fc.bias": t}  # fmt: skip
    assert body_state_dict(tv_resnet, "resnet101").keys() == {"0.weight", "1.running_var", "4.0.conv1.weight",
                                                               "7.2.bn3.bias"}  # fmt: skip
    # cirtorch network keys: features.* kept, pooling and whitening dropped, strangers kept for the strict check
    mixed = {"features.0.weight": t, "pool.p": t, "whiten.weight": t, "stranger": t}
    assert body_state_dict(mixed, "resnet50").keys() == {"0.weight", "stranger"}


def test_body_checkpoint_errors_name_the_file(tmp_path, resnet50_seed0):
    path = tmp_path / "resnet50-body.pth"
    torch.save(resnet50_seed0.features.state_dict(), path)
    with pytest.raises(ValueError, match="does not hold a resnet101 body") as info:
        load_body_checkpoint(path, "resnet101", "gem")  # resnet50's layer3 has 6 blocks, resnet101's 23
    assert str(path) in str(info.value)
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in resnet50_seed0.features.state_dict().items() if not k.startswith("7.")}, partial)
    with pytest.raises(ValueError, match=r"partial.pth: does not hold a resnet50 body: missing \['7\.0\."):
        load_body_checkpoint(partial, "resnet50")
    with pytest.raises(FileNotFoundError, match="absent.pth: an ImageNet body checkpoint not found"):
        load_body_checkpoint(tmp_path / "absent.pth", "resnet50")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"<html>404</html>")
    with pytest.raises(RuntimeError, match="garbage.pth: cannot load as an ImageNet body checkpoint"):
        load_body_checkpoint(garbage, "resnet50")
    not_weights = tmp_path / "not_weights.pth"
    torch.save({"epoch": 3}, not_weights)
    with pytest.raises(RuntimeError, match="not_weights.pth: not a state_dict of tensors"):
        load_body_checkpoint(not_weights, "resnet50")


# ----------------------------------------------------------------------------------------------------------------
# numpy arrays in checkpoint meta (precomputed whitening of old cirtorch checkpoints), weights_only=True


def _checkpoint_with_numpy_meta(path, numpy1_names: bool):
    """A cirtorch-like checkpoint whose meta holds numpy arrays; ``numpy1_names`` rewrites the pickle's module
    names to numpy 1's (numpy.core.multiarray), as in checkpoints written before numpy 2."""
    lw = {"m": np.arange(3, dtype=np.float64).reshape(3, 1), "P": np.eye(3, dtype=np.float32) * 2}
    meta = {"architecture": "resnet101", "Lw": {"retrieval-SfM-120k": {"ss": lw, "ms": lw}}, "p": np.float64(2.5)}
    torch.save({"meta": meta, "state_dict": {"pool.p": torch.ones(1)}}, path, _use_new_zipfile_serialization=False)
    if numpy1_names:
        data = path.read_bytes()  # protocol 2: module names are plain text lines
        assert b"numpy._core.multiarray" in data
        path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    return meta


@pytest.mark.parametrize("numpy1_names", [False, True])
def test_safe_torch_load_admits_numeric_numpy_arrays(tmp_path, numpy1_names):
    path = tmp_path / "old.pth"
    meta = _checkpoint_with_numpy_meta(path, numpy1_names)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)  # plain weights_only refuses numpy arrays
    loaded = safe_torch_load(path)["meta"]
    entry = loaded["Lw"]["retrieval-SfM-120k"]["ms"]
    np.testing.assert_array_equal(entry["m"], meta["Lw"]["retrieval-SfM-120k"]["ms"]["m"])
    assert entry["P"].dtype == np.float32 and entry["P"][1, 1] == 2
    assert loaded["p"] == 2.5


def test_safe_torch_load_still_refuses_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"meta": {"f": np.array([print], dtype=object)}}, path)  # an object array names a callable
    with pytest.raises(RuntimeError, match="evil.pth: cannot load as a checkpoint with weights_only=True"):
        safe_torch_load(path)


def test_real_photos_with_query_crops_match_a_straightforward_computation(
    resnet50_seed0, oxford_images, oxford_query_index, roxford_gnd
):
    names = sorted(oxford_images)
    paths = [oxford_images[n] for n in names]
    bbxs = [roxford_gnd["gnd"][oxford_query_index[n]]["bbx"] for n in names]
    assert all(roxford_gnd["qimlist"][oxford_query_index[n]] == n for n in names)
    box = dict(zip(names, bbxs, strict=True))
    image_size = 96
    # hand check of one crop: bodleian_000132 is 683 x 1024 (full = 1024), bbx [93, 110, 580, 925] -> 487 x 815;
    # target = 96 * 815/1024 = 76.4 -> 76 on the long side, short side 487 * 76/815 = 45.4 -> 45
    assert load_image(oxford_images["bodleian_000132"], image_size, box["bodleian_000132"]).size == (45, 76)
    # pitt_rivers_000033: 1024 x 766; bbx (68.3, 51.2, 989.9, 682.7) rounds to (68, 51, 990, 683) -> 922 x 632;
    # target = 96 * 922/1024 = 86.4 -> 86; short side 632 * 86/922 = 58.95 -> 59
    assert load_image(oxford_images["pitt_rivers_000033"], image_size, box["pitt_rivers_000033"]).size == (86, 59)

    net = resnet50_seed0
    ours = extract_descriptors(net, paths, image_size=image_size, bbxs=bbxs, batch_size=4)
    ours_db = extract_descriptors(net, paths[:3], image_size=image_size, batch_size=4)
    to_tensor = T.Compose([T.ToTensor(), T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])

    def straightforward(path, bbx):
        img = Image.open(path).convert("RGB")
        full = max(img.size)
        size = image_size
        if bbx is not None:
            img = img.crop(bbx)
            size = image_size * max(img.size) / full
        img.thumbnail((size, size), Image.LANCZOS, reducing_gap=None)
        with torch.no_grad():
            return net(to_tensor(img)[None])[0].numpy()

    expected = np.stack([straightforward(p, b) for p, b in zip(paths, bbxs, strict=True)])
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    np.testing.assert_allclose(ours_db, np.stack([straightforward(p, None) for p in paths[:3]]), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # the crops matter: query and whole-image descriptors differ
    assert np.abs(ours[:3] - ours_db).max() > 1e-3
    assert math.isfinite(float(ours.sum()))
