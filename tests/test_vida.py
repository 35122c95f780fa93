"""ViDA: step-for-step against the official rule (Yangsenqiao/vida@c26b0db cifar/vida.py, inject_vida.py) written out
on a tiny timm-style ViT, and its distinctive parts (adapter injection, uncertainty-driven scales, two EMA rates,
stochastic restore, the source warm-up, refusals)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from test_vit import tiny_gn_cnn, tiny_vit

from tta_bench.kernel import UserError
from tta_bench.methods._augment import tta_augment
from tta_bench.methods.vida import ViDA, ViDAWeight, vida_modules

N_CLASSES = 5


class Attention(nn.Module):  # the class name the official injection looks for (timm's Attention)
    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        # no qkv bias (timm's qkv_bias=False): the key bias has a zero gradient up to rounding, which Adam would
        # blow up to ±lr in both implementations differently
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, n, c))


class TinyViT(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = t + self.attn(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        return self.head(t.mean(1))


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return TinyViT().eval()


def data(n: int, seed: int = 1, bs: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(bs, 3, 16, 16, generator=g) for _ in range(n)]


# --- the official rule, written out ----------------------------------------------------------------------------------
class RefViDALinear(nn.Module):
    """inject_vida.ViDAInjectedLinear: linear(x) + up(down(x)) * scale1 + up2(down2(x)) * scale2."""

    def __init__(self, lin: nn.Linear, r: int, r2: int) -> None:
        super().__init__()
        self.linear_vida = lin
        self.vida_down = nn.Linear(lin.in_features, r, bias=False)
        self.vida_up = nn.Linear(r, lin.out_features, bias=False)
        self.vida_down2 = nn.Linear(lin.in_features, r2, bias=False)
        self.vida_up2 = nn.Linear(r2, lin.out_features, bias=False)
        self.scale1, self.scale2 = 1.0, 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (
            self.linear_vida(x)
            + self.vida_up(self.vida_down(x)) * self.scale1
            + self.vida_up2(self.vida_down2(x)) * self.scale2
        )


class Reference:
    """cifar/vida.py ViDA.forward_and_adapt with the optimizer of cifar10c_vit.setup_optimizer_vida."""

    def __init__(self, model: nn.Module, adapter: ViDA, hp: dict) -> None:
        self.model = copy.deepcopy(model)
        attn = self.model.attn
        for name in ("qkv", "proj"):
            ref = RefViDALinear(getattr(attn, name), hp["rank_low"], hp["rank_high"])
            theirs = getattr(adapter.model.attn, name).parametrizations.weight[0]
            for k in ("vida_down", "vida_up", "vida_down2", "vida_up2"):
                getattr(ref, k).weight.data.copy_(getattr(theirs, k).weight.data)
            attn._modules[name] = ref
        self.model.train()
        self.model.requires_grad_(True)
        named = list(self.model.named_parameters())
        self.opt = torch.optim.Adam(
            [
                {"params": [p for n, p in named if "vida_" not in n], "lr": hp["lr"]},
                {"params": [p for n, p in named if "vida_" in n], "lr": hp["vida_lr"]},
            ],
            lr=1e-5,
            betas=(0.9, 0.999),
            weight_decay=0.0,
        )
        self.state = copy.deepcopy(self.model.state_dict())
        self.ema = copy.deepcopy(self.model)
        for p in self.ema.parameters():
            p.detach_()
        self.hp = hp

    def set_scale(self, m: nn.Module, high: torch.Tensor, low: torch.Tensor) -> None:
        for mod in m.modules():
            if hasattr(mod, "scale1"):
                mod.scale1 = low.item()
            elif hasattr(mod, "scale2"):  # never reached: the official elif
                mod.scale2 = high.item()

    def step(self, x: torch.Tensor) -> torch.Tensor:
        self.ema.eval()
        outs = torch.stack([self.ema(tta_augment(x)).detach() for _ in range(self.hp["n_aug"])])
        unc = torch.mean(torch.var(outs, dim=0)) * 0.1
        if unc >= self.hp["unc_thr"]:
            high, low = 1 + unc, 1 - unc
        else:
            low, high = 1 + unc, 1 - unc
        self.set_scale(self.model, high, low)
        self.set_scale(self.ema, high, low)
        standard_ema = self.ema(x)
        outputs = self.model(x)
        loss = (-(standard_ema.detach().softmax(1) * outputs.log_softmax(1)).sum(1)).mean(0)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()
        for pe, (n, p) in zip(self.ema.parameters(), self.model.named_parameters()):
            a = self.hp["mt_vida"] if "vida_" in n else self.hp["mt"]
            pe.data[:] = a * pe[:].data[:] + (1 - a) * p[:].data[:]
        for n, p in self.model.named_parameters():
            if p.requires_grad:
                mask = (torch.rand(p.shape) < self.hp["rst"]).float()
                with torch.no_grad():
                    p.data = self.state[n] * mask + p * (1.0 - mask)
        return standard_ema


def ours_name(ref_name: str) -> str:
    """Reference parameter name -> ours (parametrised weight)."""
    for lin in ("attn.qkv.", "attn.proj."):
        if ref_name.startswith(lin):
            rest = ref_name[len(lin) :]
            if rest == "linear_vida.weight":
                return f"{lin}parametrizations.weight.original"
            if rest == "linear_vida.bias":
                return f"{lin}bias"
            return f"{lin}parametrizations.weight.0.{rest}"
    return ref_name


@pytest.mark.parametrize("unc_thr", [0.0, 1e9])  # both branches of the allotment
def test_matches_official_rule_over_steps(unc_thr: float) -> None:
    hp = dict(lr=1e-2, vida_lr=5e-2, rank_low=1, rank_high=4, n_aug=3, unc_thr=unc_thr, mt=0.9, mt_vida=0.5, rst=0.1)
    model = tiny()
    torch.manual_seed(5)
    adapter = ViDA(model, warmup_epochs=0, **hp)
    ref = Reference(model, adapter, hp)
    source = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    for i, x in enumerate(data(3)):
        torch.manual_seed(100 + i)
        mine = adapter(x)
        torch.manual_seed(100 + i)
        theirs = ref.step(x)
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    for label, net, mine_net in (("student", ref.model, adapter.model), ("teacher", ref.ema, adapter.teacher)):
        ours = dict(mine_net.named_parameters())
        for n, p in net.named_parameters():
            torch.testing.assert_close(ours[ours_name(n)], p, rtol=1e-4, atol=1e-5, msg=f"{label} {n}")
    # every parameter moved (the whole model and the adapters are trained), the adapters' ups left zero
    moved = [n for n, p in adapter.model.named_parameters() if not torch.equal(p, source[n])]
    assert len(moved) == len(source)
    for m in vida_modules(adapter.model):
        assert m.vida_up.weight.abs().max() > 0 and m.vida_up2.weight.abs().max() > 0
        assert m.scale2 == 1.0  # the official elif never sets the high-rank scale
        assert (m.scale1 < 1.0) == (unc_thr == 0.0)


def test_starts_as_the_source_model_and_injects_where_the_official_does() -> None:
    model = tiny()
    x = data(1)[0]
    adapter = ViDA(model, rank_low=1, rank_high=8)
    torch.testing.assert_close(adapter.predict(x), model(x), rtol=0, atol=1e-6)
    mods = vida_modules(adapter.model)
    assert len(mods) == 2  # qkv and proj of the one attention module; the MLP and head stay plain
    assert [tuple(m.vida_down.weight.shape) for m in mods] == [(1, 16), (1, 16)]
    assert [tuple(m.vida_up2.weight.shape) for m in mods] == [(48, 8), (16, 8)]
    assert all(float(m.vida_up.weight.detach().abs().sum()) == 0 for m in mods)
    # initial downs: N(0, 1/r^2): std ~1 for r=1, ~1/64 for r=8
    assert 0.003 < float(mods[0].vida_down2.weight.std()) < 0.04
    # torchvision ViT: nn.MultiheadAttention's in_proj_weight and out_proj of each of the 2 layers
    vit = ViDA(tiny_vit(), rank_high=4)
    assert len(vida_modules(vit.model)) == 4
    xv = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(vit.predict(xv), tiny_vit()(xv), rtol=0, atol=1e-5)
    assert vit(xv).shape == (4, 10)


def test_scale_high_sets_both_scales_and_predict_is_the_teacher() -> None:
    adapter = ViDA(tiny(), n_aug=2, unc_thr=1e9, scale_high=True, warmup_epochs=0)
    x = data(1)[0]
    out = adapter(x)
    m = vida_modules(adapter.model)[0]
    assert m.scale1 > 1.0 and m.scale2 < 1.0
    assert m.scale1 + m.scale2 == pytest.approx(2.0)
    t = vida_modules(adapter.teacher)[0]
    assert (t.scale1, t.scale2) == (m.scale1, m.scale2)
    torch.testing.assert_close(adapter.predict(x), adapter.teacher(x))
    assert out.shape == (6, N_CLASSES)
    adapter.reset()
    assert (m.scale1, m.scale2) == (1.0, 1.0)


def test_two_ema_rates_and_full_restore() -> None:
    adapter = ViDA(tiny(), n_aug=2, mt=1.0, mt_vida=0.0, rst=0.0, lr=1e-2, vida_lr=1e-2, warmup_epochs=0)
    teacher0 = {n: p.clone() for n, p in adapter.teacher.named_parameters()}
    adapter(data(1)[0])
    student = dict(adapter.model.named_parameters())
    for n, p in adapter.teacher.named_parameters():
        if "vida_" in n:
            assert torch.equal(p, student[n])  # mt_vida 0: the teacher's adapters are the student's
        else:
            assert torch.equal(p, teacher0[n])  # mt 1: the teacher's own weights stay
            assert not torch.equal(p, student[n])
    back = ViDA(tiny(), n_aug=2, rst=1.0, lr=1e-2, vida_lr=1e-2, warmup_epochs=0)
    back(data(1)[0])
    for k, v in back.model.state_dict().items():
        assert torch.equal(v, back.source_state[f"model.{k}"]), k  # rst 1: every element back to its source value


def test_prepare_warms_up_only_the_adapters() -> None:
    model = tiny()
    adapter = ViDA(model, rank_high=4, warmup_epochs=3, warmup_lr=1e-2)
    g = torch.Generator().manual_seed(3)
    source = [(torch.rand(8, 3, 16, 16, generator=g), torch.randint(0, N_CLASSES, (8,), generator=g)) for _ in range(3)]
    loss = nn.functional.cross_entropy
    before = sum(float(loss(model(x), y)) for x, y in source)
    plain = {n: p.clone() for n, p in adapter.model.named_parameters() if "vida_" not in n}
    adapter.prepare(source)
    after = sum(float(loss(adapter.model.eval()(x), y)) for x, y in source)
    adapter.model.train()
    assert after < before
    for n, p in adapter.model.named_parameters():
        if "vida_" not in n:
            assert torch.equal(p, plain[n]) and p.requires_grad
    assert any(float(m.vida_up.weight.detach().abs().sum()) > 0 for m in vida_modules(adapter.model))
    for pt, ps in zip(adapter.teacher.parameters(), adapter.model.parameters()):
        assert torch.equal(pt, ps)


def test_cnn_and_refusals() -> None:
    cnn = tiny_gn_cnn()
    with pytest.raises(UserError, match="target='attention'"):
        ViDA(cnn, target="attention")
    auto = ViDA(cnn, n_aug=2, rank_high=4)
    # 2 convs + the head: the official ViT-only injection, extended to every Linear/Conv2d
    assert len(vida_modules(auto.model)) == 3
    assert isinstance(auto.model[0].parametrizations.weight[0], ViDAWeight)
    assert auto(torch.rand(4, 3, 32, 32)).shape == (4, 10)
    dense = nn.Sequential(nn.Conv2d(3, 4, 1))
    with pytest.raises(UserError, match="dense"):
        ViDA(dense, n_aug=2, rank_high=2)(torch.rand(2, 3, 8, 8))
