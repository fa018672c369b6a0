"""Buttonlab and the smp baselines: shapes, crop mode, crop alignment, Lite0 encoders, no network access."""

import socket

import pytest
import torch

from dstray.config import SegConfig
from dstray.seg.baselines import build_segmenter
from dstray.seg.buttonlab import buttonlab
from dstray.seg.train import masked_cross_entropy


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a segmenter tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("backbone, channels", [("efficientnet_lite0", 1), ("efficientnet_lite0", 3), ("resnet18", 1),
                                               ("resnet18", 3), ("resnet34", 1), ("resnet50", 3)])
def test_buttonlab_shapes(backbone, channels, no_network):
    torch.manual_seed(0)
    net = buttonlab(backbone=backbone, weights="random", in_channels=channels).eval()
    x = torch.rand(1, channels, 64, 64)
    with torch.no_grad():
        assert net(x)["out"].shape == (1, 2, 64, 64)
        assert net(x, crop=(16, 8, 32, 40))["out"].shape == (1, 2, 32, 40)
        assert net(torch.rand(1, channels, 50, 70))["out"].shape == (1, 2, 50, 70)


@pytest.mark.parametrize("arch", ["deeplabv3plus", "unet"])
@pytest.mark.parametrize("backbone, channels", [("resnet18", 1), ("resnet18", 3), ("efficientnet_lite0", 1)])
def test_baseline_shapes(arch, backbone, channels, no_network):
    torch.manual_seed(0)
    net = build_segmenter(SegConfig(arch=arch, backbone=backbone, weights="random"), in_channels=channels).eval()
    with torch.no_grad():
        assert net(torch.rand(1, channels, 64, 64))["out"].shape == (1, 2, 64, 64)
        assert net(torch.rand(1, channels, 50, 70))["out"].shape == (1, 2, 50, 70)  # padded to 64x96 inside


def test_bad_crop_is_refused():
    net = buttonlab(backbone="resnet18", weights="random").eval()
    with pytest.raises(ValueError, match="even"):
        net(torch.rand(1, 3, 64, 64), crop=(3, 0, 32, 32))
    with pytest.raises(ValueError, match="inside"):
        net(torch.rand(1, 3, 64, 64), crop=(48, 0, 32, 32))


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18", "resnet50"])
def test_crop_features_align_with_whole_image(backbone):
    """Away from the crop border (branch receptive field), crop mode equals the full output cropped."""
    torch.manual_seed(0)
    net = buttonlab(backbone=backbone, weights="random").eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        full = net(x)["out"][..., 32:96, 30:94]
        crop = net(x, crop=(32, 30, 64, 64))["out"]
    inner = (..., slice(16, -16), slice(16, -16))
    torch.testing.assert_close(crop[inner], full[inner], atol=1e-5, rtol=1e-5)
    assert (crop - full).abs().max() > 1e-4  # the border does differ: the branch saw only the crop


def test_masked_loss_gives_no_gradient_outside_the_crop():
    torch.manual_seed(0)
    net = buttonlab(backbone="resnet18", weights="random")
    logits = net(torch.rand(2, 3, 64, 64))["out"]
    logits.retain_grad()
    target = (torch.rand(2, 1, 64, 64) > 0.8).float()
    inside = torch.zeros(2, 1, 64, 64)
    inside[..., 16:48, 8:40] = 1
    masked_cross_entropy(logits, target, inside, defect_weight=3.0).backward()
    grad = logits.grad.abs().sum(1, keepdim=True)
    assert (grad[inside == 0] == 0).all()
    assert (grad[inside == 1] > 0).all()


def test_crop_loss_depends_only_on_the_crop_labels():
    torch.manual_seed(0)
    net = buttonlab(backbone="resnet18", weights="random").eval()
    x = torch.rand(2, 3, 64, 64)
    target = (torch.rand(2, 1, 64, 64) > 0.8).float()
    top, left, h, w = 16, 8, 32, 40
    other = target.clone()
    other[..., :top, :] = 1 - other[..., :top, :]  # labels outside the crop changed
    other[..., :, left + w:] = 1 - other[..., :, left + w:]
    ones = torch.ones(2, 1, h, w)
    with torch.no_grad():
        out = net(x, crop=(top, left, h, w))["out"]
        a = masked_cross_entropy(out, target[..., top:top + h, left:left + w], ones)
        b = masked_cross_entropy(out, other[..., top:top + h, left:left + w], ones)
    assert a == b


@pytest.mark.parametrize("arch", ["buttonlab", "unet"])
def test_weights_from_a_torchvision_state_dict_file(tmp_path, arch, no_network):
    from torchvision.models import resnet18

    torch.manual_seed(1)
    state = resnet18().state_dict()
    torch.save(state, tmp_path / "r18.pth")
    net = build_segmenter(SegConfig(arch=arch, backbone="resnet18", weights=str(tmp_path / "r18.pth")))
    if arch == "buttonlab":
        encoder, branch = net.backbone, net.branch
        torch.testing.assert_close(branch.conv1.weight, state["conv1.weight"])  # the branch copies the weights
        torch.testing.assert_close(branch.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    else:
        encoder = net.model.encoder
    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.bn2.running_var"):
        torch.testing.assert_close(encoder.state_dict()[key], state[key])


def _timm_lite0_features(x: torch.Tensor, **kwargs) -> list[torch.Tensor]:
    """timm's own Lite0 feature extractor with the ImageNet weights, on the ImageNet-normalised ``x``."""
    import timm

    from dstray.seg.encoders import to_rgb_normalised
    from dstray.weights import efficientnet_lite0_state_dict

    model = timm.create_model("efficientnet_lite0", pretrained=False, features_only=True, **kwargs).eval()
    result = model.load_state_dict(efficientnet_lite0_state_dict(), strict=False)
    assert not result.missing_keys
    with torch.no_grad():
        return model(to_rgb_normalised(x))


def test_lite0_segmenters_encode_like_timm_with_the_imagenet_weights(no_network):
    """Buttonlab's Lite0 taps and smp's tu-efficientnet_lite0 encoder give timm's features on the same input."""
    from dstray.seg.encoders import to_rgb_normalised
    from dstray.weights import efficientnet_lite0

    torch.manual_seed(0)
    x = torch.rand(2, 1, 96, 128)  # grayscale, as Magnetic Tile
    net = buttonlab(backbone="efficientnet_lite0", weights="imagenet", in_channels=1).eval()
    with torch.no_grad():
        taps = net.backbone(to_rgb_normalised(x))
    low, high = _timm_lite0_features(x, out_indices=(1, 4), output_stride=16)
    torch.testing.assert_close(taps["low"], low, rtol=0, atol=0)
    torch.testing.assert_close(taps["high"], high, rtol=0, atol=0)
    assert high.shape == (2, 320, 6, 8)  # stride 16
    classifier = efficientnet_lite0("imagenet").eval()  # the low tap is the ImageNet classifier's stride-4 stage
    with torch.no_grad():
        y = classifier.bn1(classifier.conv_stem(to_rgb_normalised(x)))
        torch.testing.assert_close(classifier.blocks[1](classifier.blocks[0](y)), low)
        torch.testing.assert_close(net.branch(to_rgb_normalised(x)), classifier.blocks[0](y))  # the branch's copy

    unet = build_segmenter(SegConfig(arch="unet", backbone="efficientnet_lite0", weights="imagenet", freeze_stages=0,
                                     channels_last=False),
                           in_channels=1).eval()
    with torch.no_grad():
        features = unet.model.encoder(to_rgb_normalised(x))[1:]  # smp puts the input first
    for ours, theirs in zip(features, _timm_lite0_features(x)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_lite0_weights_from_a_file_reach_backbone_and_branch(tmp_path, no_network):
    from dstray.weights import efficientnet_lite0

    torch.manual_seed(3)
    state = efficientnet_lite0("random").state_dict()  # a user's Lite0 (timm key names)
    torch.save(state, tmp_path / "lite0.pth")
    net = buttonlab(backbone="efficientnet_lite0", weights=str(tmp_path / "lite0.pth"))
    torch.testing.assert_close(net.backbone.body.state_dict()["blocks.3.0.conv_pw.weight"],
                               state["blocks.3.0.conv_pw.weight"])
    torch.testing.assert_close(net.branch.conv_stem.weight, state["conv_stem.weight"])
    deeplab = build_segmenter(SegConfig(arch="deeplabv3plus", weights=str(tmp_path / "lite0.pth")))
    torch.testing.assert_close(deeplab.model.encoder.model.state_dict()["blocks.5.1.bn2.running_var"],
                               state["blocks.5.1.bn2.running_var"])
