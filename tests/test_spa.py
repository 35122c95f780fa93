"""SPA (methods/spa.py): equivalence with the official rule (mr-eggplant/SPA tta_library/spa.py, models/maskers.py,
models/byol_wrapper.py at b4a66ea, its fixed 224-px mask written for the test image size) on a tiny torchvision ViT
over several batches — returned logits, the normalisation parameters, the predictor, the erasing strengths α —, with
and without the Tent auxiliary loss; the Fourier mask (conjugate-symmetric, only the low-frequency centre dropped),
the patch erasing (α = 0: identity; α = 1: one noise draw shared by the batch), α's renormalisation; a CNN refused.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import VisionTransformer

from tta_bench.kernel import UserError
from tta_bench.methods import create
from tta_bench.methods.spa import fourier_mask, low_frequency_mask

C, D, S, PATCH = 5, 16, 32, 8


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    vit = VisionTransformer(S, PATCH, num_layers=2, num_heads=2, hidden_dim=D, mlp_dim=32, num_classes=C)
    with torch.no_grad():
        vit.heads.head.weight.normal_(0, 0.5)
        for m in vit.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.8, 1.2), m.bias.uniform_(-0.1, 0.1)
    return vit.eval()


def data(n: int, seed: int, bs: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(bs, 3, S, S, generator=g) * 2 - 1 for _ in range(n)]


# --- the official rule, written out ------------------------------------------------------------------------------
class OfficialPrompt:  # spa.py Prompt(prompt_alpha=0.2), imageH = imageW = S
    def __init__(self) -> None:
        ph = pw = int(S * 0.2)
        pad_h = pad_w = (S - ph) // 2
        init = torch.ones((1, 3, ph, pw))
        self.low_mask = F.pad(init, [S - pad_h - ph, pad_h, S - pad_w - pw, pad_w], mode="constant", value=0.0)
        self.high_mask = 1 - self.low_mask

    def symmetric(self, mask):
        sh, sw = 1 - (mask.shape[-2] % 2), 1 - (mask.shape[-1] % 2)
        sub = mask[:, :, sh:, sw:]
        mh, mw = sub.shape[-2] // 2, sub.shape[-1] // 2
        sub[:, :, -mh:, :] = 1
        sub[:, :, mh, :mw] = 1
        sub = sub * torch.flip(sub, dims=[-1, -2])
        mask[:, :, sh:, sw:] = sub
        return mask

    def masking(self, x, keep_prob):
        fft = torch.fft.fft2(x.clone(), dim=(-2, -1))
        amp, pha = torch.abs(fft), torch.angle(fft)
        amp = torch.fft.fftshift(amp)
        mask = self.symmetric(self.low_mask * torch.empty_like(amp).bernoulli_(keep_prob) + self.high_mask)
        amp = torch.fft.ifftshift(amp * mask)
        fft_ = torch.complex(real=torch.cos(pha) * amp, imag=torch.sin(pha) * amp)
        return torch.fft.ifft2(fft_, dim=(-2, -1), s=[S, S]).real


def official_erase(img, alpha):  # maskers.py LearnablePatchErasing.forward
    h = w = img.shape[-1] // PATCH
    new = torch.empty_like(img)
    for k, (i, j) in enumerate([(i * PATCH, j * PATCH) for i in range(h) for j in range(w)]):
        v = torch.empty([img.shape[-3], PATCH, PATCH], dtype=torch.float32).normal_()
        new[..., i : i + PATCH, j : j + PATCH] = (1 - alpha[k] ** 2) * img[..., i : i + PATCH, j : j + PATCH] + alpha[
            k
        ] ** 2 * v
    new.clip_(-1, 1)
    return new


def official_run(vit, stream, aux, noise_ratio=0.4, mask_ratio=0.2):
    net = copy.deepcopy(vit).train()
    net.requires_grad_(False)
    predictor = nn.Linear(D, D, bias=False)
    nn.init.eye_(predictor.weight)
    params = []
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            m.requires_grad_(True)
            params += [m.weight, m.bias]
    opt = torch.optim.SGD([{"params": params, "lr": 0.01, "momentum": 0.9},
                           {"params": predictor.parameters(), "lr": 0.05, "momentum": 0.9}])  # fmt: skip
    alpha = nn.Parameter(torch.ones((S // PATCH) ** 2) * math.sqrt(noise_ratio))
    popt = torch.optim.SGD([alpha], 1, momentum=0.9)
    prompt, kl = OfficialPrompt(), nn.KLDivLoss(reduction="batchmean")

    def low(x):  # BYOLWrapper(use_predictor=True) on torchvision names
        t = net._process_input(x)
        t = net.encoder(torch.cat([net.class_token.expand(t.shape[0], -1, -1), t], dim=1))[:, 0]
        return net.heads(predictor(t))

    def consist(x, outputs):
        lo = low(x)
        conf, low_conf = outputs.softmax(-1).max(-1)[0], lo.softmax(-1).max(-1)[0]
        ids = torch.where(conf > low_conf)
        return kl(lo[ids].log_softmax(-1), outputs[ids].softmax(-1).clone().detach()).mean()

    torch.manual_seed(5)
    outs = []
    for x in stream:
        outputs = net(x)
        loss = consist(prompt.masking(x, keep_prob=1 - mask_ratio), outputs)
        loss += consist(official_erase(x, alpha), outputs)
        if aux == "tent":
            loss += 0.1 * (-(outputs.softmax(1) * outputs.log_softmax(1)).sum(1)).mean()
        loss.backward()
        alpha.grad = -alpha.grad
        opt.step(), opt.zero_grad(), popt.step(), popt.zero_grad()
        with torch.no_grad():
            alpha /= torch.sqrt((alpha**2).mean() / noise_ratio)
            torch.clip_(alpha, -1, 1)
        outs.append(outputs.detach())
    return outs, params, predictor.weight, alpha


@pytest.mark.parametrize("aux", ["none", "tent"])
def test_spa_matches_the_official_rule_over_several_batches(aux: str) -> None:
    vit, stream = tiny_vit(), data(3, 1)
    spa = create("spa", vit, aux=aux)
    torch.manual_seed(5)
    got = [spa(x).detach() for x in stream]
    want, params, predictor, alpha = official_run(vit, stream, aux)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    ours = [p for p in spa.optimizer.param_groups[0]["params"]]
    assert len(ours) == len(params) == 2 * (2 * 2 + 1)  # two LayerNorms per block + the final one
    for p, q in zip(ours, params):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)  # float paths differ with the thread count
    torch.testing.assert_close(spa.predictor.weight, predictor, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(spa.alpha, alpha, rtol=1e-4, atol=1e-5)
    assert not torch.equal(spa.predictor.weight, torch.eye(D))  # the predictor and α moved
    assert (spa.alpha - math.sqrt(0.4)).abs().max() > 1e-4
    # renormalised to mean α² = noise_ratio, then clipped to [-1, 1] (which can only lower the mean)
    a = spa.alpha.detach()
    assert bool((a.abs() <= 1).all()) and float((a**2).mean()) <= 0.4 + 1e-6
    if float(a.abs().max()) < 1:
        assert float((a**2).mean()) == pytest.approx(0.4, rel=1e-5)


def test_the_fourier_mask_drops_only_symmetric_low_frequencies() -> None:
    torch.manual_seed(0)
    mask = low_frequency_mask(4, 3, S, S, 0.5, "cpu")
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    sub = mask[:, :, 1:, 1:]
    assert torch.equal(sub, torch.flip(sub, dims=[-1, -2]))  # conjugate-symmetric: the inverse FFT is real
    side = int(S * 0.2)
    lo = S - (S - side) // 2 - side  # the centre square of the official F.pad
    outside = torch.ones(S, S, dtype=torch.bool)
    outside[lo : lo + side + 1, lo : lo + side + 1] = False  # the square and its mirror about the centre (16, 16)
    assert bool((mask[..., outside] == 1).all()) and bool((mask[..., ~outside] == 0).any())
    x = data(1, 2, bs=2)[0]
    torch.testing.assert_close(fourier_mask(x, 1.0), x, rtol=0, atol=1e-5)  # keep everything: the image itself
    y = fourier_mask(x, 0.0)
    assert (y - x).abs().mean() > 1e-3 and not y.isnan().any()


def test_patch_erasing_mixes_one_shared_noise_draw_per_patch() -> None:
    spa = create("spa", tiny_vit())
    x = data(1, 3, bs=2)[0] * 0.5
    with torch.no_grad():
        spa.alpha.zero_()
        assert torch.equal(spa.erase(x), x)
        spa.alpha.fill_(1.0)
        noise = spa.erase(x)
    assert torch.equal(noise[0], noise[1]) and not torch.equal(noise[0], x[0])  # shared by the batch
    assert noise.min() >= -1 and noise.max() <= 1


def test_spa_refuses_a_cnn() -> None:
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, C))
    with pytest.raises(UserError, match="Vision Transformer"):
        create("spa", cnn)
