"""TransferNet (paper Fig. 2): shapes, range, exact background outside L, identity at init, blending."""

import pytest
import torch

from dstray.dst.transfer_net import TransferNet, blend_weight, soft_paste


def _area(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    area = torch.zeros(n, 1, h, w)
    for i in range(n):
        y, x = torch.randint(0, h // 2, (2,), generator=g).tolist()
        area[i, :, y:y + h // 3, x:x + w // 3] = 1
    return area


@pytest.mark.parametrize("shape", [(1, 1, 32, 32), (2, 3, 64, 48), (1, 1, 30, 45)])
def test_shape_range_and_background_outside_area(shape):
    torch.manual_seed(0)
    n, c, h, w = shape
    net = TransferNet(in_channels=c)
    x, s = torch.rand(shape), torch.rand(shape)
    area = _area(n, h, w)
    y = net(x, s, area)
    assert y.shape == shape
    assert 0 <= y.min() and y.max() <= 1
    outside = (area == 0).expand_as(y)
    assert torch.equal(y[outside], s[outside])
    assert not torch.equal(y[~outside], s[~outside])


def test_transform_alone_in_unit_range_and_layer_table():
    net = TransferNet(3)
    y = net.transform(torch.rand(1, 3, 36, 20))
    assert y.shape == (1, 3, 36, 20) and 0 <= y.min() and y.max() <= 1
    assert net.conv1[1].kernel_size == (9, 9) and net.conv2[1].stride == (2, 2)
    assert net.conv4[1].in_channels == 64  # skip connection concatenated


def test_blend_weight_rule_keeps_labels_mostly_generated():
    area = torch.zeros(1, 1, 40, 40)
    area[..., 10:30, 10:30] = 1
    gen, bg = torch.ones(1, 1, 40, 40), torch.zeros(1, 1, 40, 40)
    y = soft_paste(gen, bg, area, sigma=2.0)
    assert y[..., 20, 20].item() == 1.0  # deep inside: generated
    assert y[..., 10, 20].item() == pytest.approx(0.75)  # on the border: 1/2 + 1/(2 sigma)
    assert y[..., 11, 20].item() == 1.0  # 2 sigma = 4 px of fade, chessboard distance 2 -> 1
    assert y[area == 0].abs().max() == 0  # outside: background
    assert torch.equal(soft_paste(gen, bg, area, sigma=0.0), area)  # hard paste
    # a 2-px wide crack: every labelled pixel at least 0.75 generated (a Gaussian-blurred mask gave ~0.5)
    crack = torch.zeros(1, 1, 60, 60)
    crack[..., 5:55, 29:31] = 1
    g = blend_weight(crack, 2.0)[crack > 0]
    assert g.min() >= 0.75 and g.mean() >= 0.75
    assert torch.equal(blend_weight(crack, 2.0)[crack == 0], torch.zeros(int((crack == 0).sum())))


def test_identity_at_init_and_one_correction_channel_keeps_hue():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 36, 28)
    net = TransferNet(3)
    assert torch.equal(net.transform(x), x)  # zero-initialised correction: T(y') = y'
    torch.nn.init.normal_(net.conv5[1].weight, std=0.05)  # as after a fit
    y = net.transform(x)
    delta = y - x
    unclipped = ((y > 0) & (y < 1)).all(1, keepdim=True).expand_as(y)
    assert delta.abs().max() > 0
    # the same correction on R, G and B wherever nothing was clipped: chroma (R-G, B-G) is unchanged
    assert torch.allclose((delta[:, :1] - delta[:, 1:2])[unclipped[:, :1]], torch.zeros(1), atol=1e-6)
    assert torch.allclose((delta[:, 2:] - delta[:, 1:2])[unclipped[:, :1]], torch.zeros(1), atol=1e-6)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = TransferNet(1)
    x = torch.rand(2, 1, 32, 32)
    area = _area(2, 32, 32)
    net(x, x, area).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_forward_background_exact():
    net = TransferNet(1).cuda()
    x, s = torch.rand(2, 1, 64, 64, device="cuda"), torch.rand(2, 1, 64, 64, device="cuda")
    area = _area(2, 64, 64).cuda()
    y = net(x, s, area)
    outside = (area == 0).expand_as(y)
    assert torch.equal(y[outside], s[outside])
