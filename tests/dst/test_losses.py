"""Masked DST losses (paper eq. 3-6) and the frozen VGG-19 loss network."""

from pathlib import Path

import pytest
import torch

from dstray.config import DSTConfig
from dstray.dst.histmatch import sort_reference
from dstray.dst.losses import DSTLoss, content_loss, feature_mask, gram, hist_loss, style_loss, tv_loss
from dstray.dst.transfer_net import soft_paste
from dstray.dst.loss_net import VGGFeatures, _VGGTrunk, layer_names
from dstray.weights import WeightsUnavailableError


def _mask(n, h, w, box):
    m = torch.zeros(n, 1, h, w)
    y0, x0, y1, x1 = box
    m[..., y0:y1, x0:x1] = 1
    return m


# ------------------------------------------------------------------ feature-level terms
def test_feature_mask_binary_and_tiny_area_survives():
    m = _mask(2, 64, 64, (8, 8, 40, 40))
    m[1] = 0
    m[1, 0, 30, 30] = 1  # one pixel: covers 1/64 of a relu4_1 cell
    fm = feature_mask(m, (8, 8))
    assert set(fm.unique().tolist()) <= {0.0, 1.0}
    assert fm[0].sum() == 16 and fm[1].sum() == 1 and fm[1, 0, 3, 3] == 1
    assert feature_mask(torch.zeros(1, 1, 16, 16), (4, 4)).sum() == 0


def test_gram_hand_computed():
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [-1.0, 2.0]]]])  # (1,2,2,2)
    m = torch.tensor([[[[1.0, 1.0], [0.0, 1.0]]]])  # positions (0,0), (0,1), (1,1)
    # channel vectors at the masked positions: a = (1, 2, 4), b = (0, 1, 2)
    expected = torch.tensor([[1 + 4 + 16, 0 + 2 + 8], [0 + 2 + 8, 0 + 1 + 4]]) / 3
    assert torch.allclose(gram(f, m)[0], expected)


def test_content_and_style_zero_at_target_positive_otherwise_and_ignore_outside():
    torch.manual_seed(0)
    f = torch.rand(2, 8, 10, 10, requires_grad=True)
    m = _mask(2, 10, 10, (2, 2, 7, 7))
    assert content_loss(f, f.detach(), m) == 0
    assert style_loss(f, f.detach(), m, m) == 0
    other = f.detach() + torch.rand_like(f) * (m == 0)  # differs only outside the mask
    assert content_loss(f, other, m) == 0
    assert torch.allclose(style_loss(f, other, m, m), torch.zeros(()), atol=1e-6)
    target = torch.rand_like(f)
    loss = content_loss(f, target, m) + style_loss(f, target, m, m)
    assert loss > 0
    loss.backward()
    assert f.grad[(m == 0).expand_as(f)].abs().max() == 0
    assert f.grad[(m == 1).expand_as(f)].abs().max() > 0


def test_hist_loss_zero_when_distribution_matches():
    torch.manual_seed(0)
    f = torch.rand(1, 4, 12, 12, requires_grad=True)
    m = _mask(1, 12, 12, (0, 0, 6, 12))
    own = sort_reference(f.detach(), m)
    assert hist_loss(f, m, own) < 1e-12  # already follows the reference distribution
    ref = sort_reference(torch.rand(1, 4, 9, 9) * 3 + 1, torch.ones(1, 1, 9, 9))
    loss = hist_loss(f, m, ref)
    assert loss > 0.5
    loss.backward()
    assert f.grad[(m == 0).expand_as(f)].abs().max() == 0
    assert f.grad[(m == 1).expand_as(f)].abs().max() > 0


def test_tv_inside_area_only():
    torch.manual_seed(0)
    m = _mask(1, 16, 16, (4, 4, 12, 12))
    flat = torch.full((1, 1, 16, 16), 0.3)
    assert tv_loss(flat, m) == 0
    noisy = torch.rand(1, 1, 16, 16, requires_grad=True)
    loss = tv_loss(noisy, m)
    assert loss > 0
    loss.backward()
    assert noisy.grad[m == 0].abs().max() == 0
    far = noisy.detach().clone()
    far[..., :2, :] = 5.0  # two rows away from L: no pair touches L
    assert torch.equal(tv_loss(far, m), tv_loss(noisy.detach(), m))


# ------------------------------------------------------------------ DSTLoss on images
@pytest.fixture(scope="module")
def dst_loss():
    torch.manual_seed(0)
    return DSTLoss(DSTConfig(loss_weights="random"))


def test_dst_loss_terms_and_zero_gradient_outside_area(dst_loss):
    torch.manual_seed(1)
    s = torch.rand(2, 1, 48, 48)
    area = _mask(2, 48, 48, (14, 10, 30, 34))
    ref, ref_mask = torch.rand(1, 1, 40, 40) * 0.5, _mask(1, 40, 40, (10, 10, 30, 30))
    dst_loss.set_reference(ref, ref_mask)
    content = torch.where(area > 0, s * 0.5, s)
    at_target = dst_loss(content, content, s, area)
    assert set(at_target) == {"content", "style", "hist", "tv", "total"}
    assert at_target["content"] == 0
    raw = torch.rand(2, 1, 48, 48, requires_grad=True)  # what TransferNet.transform would output
    out = dst_loss(soft_paste(raw, s, area, 2.0), content, s, area)
    assert all(out[k] > 0 for k in ("content", "style", "hist", "tv"))
    assert torch.allclose(out["total"], out["content"] + out["style"] + out["hist"] + out["tv"])
    out["total"].backward()
    assert raw.grad[(area == 0).expand_as(raw)].abs().max() == 0
    assert raw.grad[(area == 1).expand_as(raw)].abs().max() > 0


def test_dst_loss_needs_reference():
    loss = DSTLoss(DSTConfig(), vgg=VGGFeatures(["relu1_1", "relu4_1"], weights="random"))
    x, a = torch.rand(1, 1, 16, 16), _mask(1, 16, 16, (4, 4, 12, 12))
    with pytest.raises(RuntimeError, match="set_reference"):
        loss(x, x, x, a)


# ------------------------------------------------------------------ VGG-19 loss network
def test_vgg_frozen_dict_gray_and_no_inplace():
    torch.manual_seed(0)
    vgg = VGGFeatures(["relu1_1", "conv2_1", "relu2_1"], weights="random")
    assert len(vgg.features) == layer_names().index("relu2_1") + 1  # truncated
    assert not any(p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training
    x = torch.rand(1, 1, 32, 32)
    x0 = x.clone()
    out = vgg(x)
    assert list(out) == ["relu1_1", "conv2_1", "relu2_1"]
    assert torch.equal(x, x0)  # normalisation happened on a copy
    assert out["conv2_1"].min() < 0  # conv output not overwritten by the in-place ReLU
    assert torch.allclose(vgg(x.expand(-1, 3, -1, -1))["relu2_1"], out["relu2_1"])


def test_random_vgg_scale():
    """Kaiming-initialised random VGG keeps activations of order 1 at every depth (no explosion/vanishing)."""
    torch.manual_seed(0)
    relus = [n for n in layer_names() if n.startswith("relu")]
    out = VGGFeatures(relus, weights="random")(torch.rand(1, 1, 64, 64))
    rms = {k: v.pow(2).mean().sqrt().item() for k, v in out.items()}
    assert all(0.2 < r < 5 for r in rms.values()), rms


def test_vgg_weights_from_file(tmp_path):
    torch.manual_seed(3)
    state = _VGGTrunk().state_dict()
    path = tmp_path / "vgg19_random.pth"
    torch.save(state, path)
    vgg = VGGFeatures(["relu1_1"], weights=str(path))
    assert torch.equal(vgg.features[0].weight, state["features.0.weight"])
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsUnavailableError):
        VGGFeatures(["relu1_1"], weights=str(tmp_path / "bad.pth"))


def test_vgg_imagenet_unavailable_offline():
    from torchvision.models import VGG19_Weights

    cached = Path(torch.hub.get_dir()) / "checkpoints" / VGG19_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    if cached.exists():
        pytest.skip("ImageNet VGG-19 weights are cached on this machine")
    try:
        VGGFeatures(["relu1_1"], weights="imagenet")
    except WeightsUnavailableError as exc:
        message = str(exc)
    else:
        pytest.skip("ImageNet VGG-19 weights could be downloaded (machine has internet)")
    assert "random" in message and "/checkpoints" in message and ".pth" in message
