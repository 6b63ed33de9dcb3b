"""Pooling, networks, image loading/cropping/resizing and descriptor extraction (cirtorch's recipe)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torch import nn

from csa_rerank import extract, networks
from csa_rerank.extract import ImageReadError, extract_descriptors, load_image, multiscale_descriptor
from csa_rerank.networks import GeM, RetrievalNet, build_network, gem, l2n, load_cirtorch_network, mac, spoc

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
    with pytest.raises(ValueError, match="unknown pooling 'rmac'"):
        build_network("resnet50", "rmac")


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
