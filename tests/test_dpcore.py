"""DPCore: step-for-step against the official loop (zybeich/DPCore@79b143f imagenet/dpcore.py, vpt.py) written out on
a tiny torchvision ViT with explicit prompt injection, and its distinctive parts (source statistics filter, coreset
growth and in-distribution updates, timm prompt injection, refusals)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from test_vit import tiny_gn_cnn, tiny_vit

from tta_bench.kernel import UserError
from tta_bench.methods.dpcore import DPCore


def vit() -> nn.Module:
    """The tiny ViT with a sharper head: enough source images pass the filter entropy < ln(10)/2 - 1 = 0.15."""
    model = tiny_vit()
    with torch.no_grad():
        model.model.heads.head.weight.mul_(8.0)
    return model


def source(seed: int = 2, n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(16, 3, 32, 32, generator=g), torch.zeros(16, dtype=torch.long)) for _ in range(n)]


def shifted(seed: int, scale: float, shift: float, bs: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(bs, 3, 32, 32, generator=g) * scale + shift).clamp(0, 1)


# --- the official loop, written out on torchvision's ViT -------------------------------------------------------------
class Ref:
    def __init__(self, model: nn.Module, prompts: torch.Tensor, hp: dict) -> None:
        self.norm, self.vit = model, model.model  # Normalized(net): (x - mean) / std, then the ViT
        self.init = prompts.detach().clone()
        self.prompts = prompts.detach().clone()
        self.hp, self.coreset = hp, []

    def features(self, x: torch.Tensor, prompts: torch.Tensor | None) -> torch.Tensor:
        """PromptViT.forward_features / forward_raw_features (all tokens after the final norm)."""
        v = self.vit
        x = (x - self.norm.mean) / self.norm.std
        x = v._process_input(x)
        x = torch.cat([v.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = v.encoder.dropout(x + v.encoder.pos_embedding)
        if prompts is not None:
            x = torch.cat((x[:, :1], prompts.expand(x.shape[0], -1, -1), x[:, 1:]), dim=1)
        return v.encoder.ln(v.encoder.layers(x))

    def loss(self, cls: torch.Tensor) -> tuple[torch.Tensor, ...]:
        std, mean = torch.std_mean(cls, dim=0)
        return torch.norm(std - self.train_info[0], p=2) + torch.norm(mean - self.train_info[1], p=2), mean, std

    def src_stat(self, loader: list, num_samples: int) -> None:
        feats, num = [], 0
        with torch.no_grad():
            for x, _ in loader:
                f = self.features(x, None)
                out = self.vit.heads(f[:, 0])
                ent = -(out.softmax(1) * out.log_softmax(1)).sum(1)
                f = f[torch.where(ent < math.log(out.shape[1]) / 2 - 1)[0]]
                feats.append(f[:, 0])
                num += f.shape[0]
                if num >= num_samples:
                    break
        self.train_info = torch.std_mean(torch.cat(feats)[:num_samples], dim=0)

    def adapt_step(self, x: torch.Tensor, p: nn.Parameter, opt: torch.optim.Optimizer) -> tuple[torch.Tensor, ...]:
        f = self.features(x, p)
        loss, mean, std = self.loss(f[:, 0])
        out = self.vit.heads(f[:, 0])
        loss.backward()
        opt.step()
        opt.zero_grad()
        return out, mean, std

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        with torch.no_grad():
            loss, bm, bs = self.loss(self.features(x, None)[:, 0])
            is_id = False
            if self.coreset:
                ms, ss = torch.stack([c[0] for c in self.coreset]), torch.stack([c[1] for c in self.coreset])
                match = torch.norm(bm - ms, p=2, dim=1) + 1.0 * torch.norm(bs - ss, p=2, dim=1)
                weights = torch.softmax(-match / self.hp["temp_tau"], dim=0)
                wp = torch.stack([w * c[2] for w, c in zip(weights, self.coreset)]).sum(0)
                loss_new = self.loss(self.features(x, wp)[:, 0])[0]
                is_id = bool(loss_new < loss * self.hp["thr_rho"])
        if is_id:
            p = nn.Parameter(wp.clone())
            out, mean, std = self.adapt_step(x, p, torch.optim.AdamW([p], lr=1e-1))
            self.prompts = p.detach().clone()
            for i in range(len(self.coreset)):
                a = self.hp["ema_alpha"]
                self.coreset[i][0] += a * weights[i] * (mean.detach() - self.coreset[i][0])
                self.coreset[i][1] += a * weights[i] * torch.clamp(std.detach() - self.coreset[i][1], min=0.0)
                self.coreset[i][2] += a * weights[i] * (self.prompts - self.coreset[i][2])
        else:
            p = nn.Parameter(self.init.clone())
            opt = torch.optim.AdamW([p], lr=1e-1)
            for _ in range(self.hp["ood_steps"]):
                out = self.adapt_step(x, p, opt)[0]
            self.prompts = p.detach().clone()
            self.coreset.append([bm, bs, self.prompts.clone()])
        return out, is_id


def test_matches_official_loop_over_steps() -> None:
    hp = dict(ood_steps=3, thr_rho=0.8, temp_tau=3.0, ema_alpha=0.999, num_prompts=4, src_samples=24)
    model = vit()
    torch.manual_seed(0)
    adapter = DPCore(model, **hp)
    ref = Ref(model, adapter.tap.prompts, hp)
    src = source()
    adapter.prepare(src)
    ref.src_stat(src, 24)
    torch.testing.assert_close(adapter.src_std, ref.train_info[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(adapter.src_mean, ref.train_info[1], rtol=0, atol=1e-6)
    stream = [shifted(1, 0.5, 0.4), shifted(2, 0.5, 0.4), shifted(3, 0.2, 0.0), shifted(4, 0.5, 0.4)]
    kinds = []
    for x in stream:
        mine = adapter(x)
        theirs, is_id = ref.forward(x)
        kinds.append(is_id)
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(adapter.tap.prompts.detach(), ref.prompts, rtol=1e-4, atol=1e-5)
        assert len(adapter.coreset) == len(ref.coreset)
        for c_mine, c_ref in zip(adapter.coreset, ref.coreset):
            for a, b in zip(c_mine, c_ref):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert kinds[0] is False and True in kinds  # both branches ran: a new domain and an in-distribution batch
    # the model's weights never change
    for k, v in adapter.model.state_dict().items():
        assert torch.equal(v, adapter.source_state[f"model.{k}"])


def test_coreset_grows_per_domain_and_reset_clears_it() -> None:
    adapter = DPCore(vit(), ood_steps=2, num_prompts=2, src_samples=24)
    adapter.prepare(source())
    x = shifted(1, 0.5, 0.4)
    adapter(x)
    assert len(adapter.coreset) == 1
    mean, std, prompt = adapter.coreset[0]
    assert mean.shape == std.shape == (32,) and prompt.shape == (1, 2, 32)
    assert not torch.equal(prompt, adapter.source_state["tap.prompts"])  # learnt
    # predict: the current prompt (two forwards of the same model: equal up to float rounding on any SIMD path)
    torch.testing.assert_close(adapter.predict(x), adapter.model(x), rtol=1e-4, atol=1e-4)
    adapter.reset()
    assert adapter.coreset == [] and torch.equal(adapter.tap.prompts, adapter.source_state["tap.prompts"])


def test_prompt_init_range_and_raw_forward_is_the_source_model() -> None:
    model = tiny_vit()
    adapter = DPCore(model, num_prompts=8)
    val = math.sqrt(6.0 / (3 * 8 * 8 + 32))
    p = adapter.tap.prompts.detach()
    assert p.shape == (1, 8, 32) and float(p.abs().max()) <= val and float(p.abs().max()) > 0.8 * val
    x = shifted(5, 1.0, 0.0)
    with torch.no_grad():
        torch.testing.assert_close(adapter.forward_cls(x, prompts=False), model(x), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(adapter.forward_cls(x, prompts=True), model(x), atol=1e-3)


def test_timm_vit_prompt_injection_matches_prompt_vit() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10
    ).eval()
    adapter = DPCore(vit, num_prompts=3)
    x = shifted(6, 1.0, 0.0, bs=4)
    p = adapter.tap.prompts.detach()
    with torch.no_grad():  # vpt.py PromptViT.forward
        t = vit._pos_embed(vit.patch_embed(x))
        t = torch.cat((t[:, :1], p.expand(4, -1, -1), t[:, 1:]), dim=1)
        ref = vit.forward_head(vit.norm(vit.blocks(vit.norm_pre(t))))
        torch.testing.assert_close(adapter.forward_cls(x, prompts=True), ref, rtol=1e-4, atol=1e-4)
        assert adapter.tap.cls.shape == (4, 32)


def test_refusals() -> None:
    with pytest.raises(UserError, match="Vision Transformer"):
        DPCore(tiny_gn_cnn())
    adapter = DPCore(tiny_vit())  # no prepare: the prompted model's predictions, nothing adapts
    x = shifted(1, 1.0, 0.0)
    torch.testing.assert_close(adapter(x), adapter.predict(x), rtol=1e-4, atol=1e-4)
    assert adapter.coreset == [] and torch.equal(adapter.tap.prompts, adapter.source_state["tap.prompts"])
    src = source()
    uncertain = DPCore(tiny_vit(), src_samples=20)
    with torch.no_grad():
        uncertain.model.model.heads.head.weight.zero_()  # uniform predictions: no image passes the entropy filter
    with pytest.warns(UserWarning, match="unfiltered"):
        uncertain.prepare(src)
    with torch.no_grad():
        uncertain.forward_cls(torch.cat([x for x, _ in src])[:20], prompts=False)
        std, mean = torch.std_mean(uncertain.tap.cls, dim=0)
    torch.testing.assert_close(uncertain.src_mean, mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(uncertain.src_std, std, rtol=0, atol=1e-6)
    with pytest.raises(UserError, match="empty"):
        DPCore(vit()).prepare([])
