"""TTL on the tiny random CLIP: against a plain restatement of TTA-VLM's ttl.py with custom_clip.py's LoRA modules
(separate q/k/v projections, the attention written out) swapped into a copy of the image encoder."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("open_clip")

from test_tpt import build_tiny, test_views  # noqa: E402

from tta_bench.methods import TTL  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return build_tiny()


class LoRALinear(nn.Module):
    def __init__(self, weight, bias, a, scaling):
        super().__init__()
        self.w, self.b, self.scaling = weight, bias, scaling
        self.A = nn.Parameter(a.clone())
        self.B = nn.Parameter(torch.zeros(a.shape[1], weight.shape[0]))

    def forward(self, x):
        return F.linear(x, self.w, self.b) + F.linear(F.linear(x, self.A.T), self.B.T) * self.scaling


class LoRAAttention(nn.Module):
    """LoRAMultiheadAttention for a batch_first nn.MultiheadAttention (open_clip's layout)."""

    def __init__(self, attn, a_q, a_v, scaling):
        super().__init__()
        e, self.h = attn.embed_dim, attn.num_heads
        w, b = attn.in_proj_weight.detach(), attn.in_proj_bias.detach()
        self.q = LoRALinear(w[:e], b[:e], a_q, scaling)
        self.k_w, self.k_b = w[e : 2 * e], b[e : 2 * e]
        self.v = LoRALinear(w[2 * e :], b[2 * e :], a_v, scaling)
        self.out_proj = attn.out_proj

    def forward(self, x_q, x_k, x_v, need_weights=None, attn_mask=None):
        n, seq, e = x_q.shape
        hd = e // self.h
        q = self.q(x_q).reshape(n, seq, self.h, hd).transpose(1, 2)
        k = F.linear(x_k, self.k_w, self.k_b).reshape(n, seq, self.h, hd).transpose(1, 2)
        v = self.v(x_v).reshape(n, seq, self.h, hd).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / hd**0.5
        if attn_mask is not None:
            scores = scores + attn_mask
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, seq, e)
        return self.out_proj(out), None


def reference_ttl(clip, xs, a_init, lr, steps, blocks):
    visual = copy.deepcopy(clip.clip.visual)
    loras = []
    for j, i in enumerate(blocks):
        block = visual.transformer.resblocks[i]
        block.attn = LoRAAttention(block.attn, a_init[2 * j], a_init[2 * j + 1], 32 / 16)
        loras += [block.attn.q, block.attn.v]
    text = clip.text_features  # "a photo of a {}."

    def model(x):
        f = visual(clip.preprocess(x))
        return clip.logit_scale.exp() * (f / f.norm(dim=-1, keepdim=True)) @ text.t()

    outs, factors = [], []
    for x in xs:
        for m in loras:  # reset: A to its initial draw, B to zero; a fresh optimizer state
            with torch.no_grad():
                m.A.copy_(a_init[loras.index(m)])
                m.B.zero_()
        params = [{"params": m.A} for m in loras] + [{"params": m.B} for m in loras]
        opt = torch.optim.AdamW(params, lr)
        images = test_views(x)
        for _ in range(steps):
            outputs = model(images)
            entropys = -(outputs.softmax(1) * outputs.log_softmax(1)).sum(1)
            coeff = 1 / (torch.exp(entropys.clone().detach() - 0.4))
            loss = entropys.mul(coeff).mean(0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        factors.append([m.B.detach().clone() for m in loras])
        with torch.no_grad():
            outs.append(model(x[None]))
    return torch.cat(outs), factors


def test_ttl_matches_official(tiny) -> None:
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    adapter = TTL(tiny, steps=2, lr=5e-3)
    adapter.views = test_views
    assert len(adapter.lora_A) == 4  # clip-tiny has 2 blocks: both adapted (q and v each)
    a_init = [a.detach().clone() for a in adapter.lora_A]
    tuned, reset = [], adapter.reset

    def recording_reset():
        tuned.append([b.detach().clone() for b in adapter.lora_B])
        reset()

    adapter.reset = recording_reset
    xs = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(71))
    want, factors = reference_ttl(tiny, xs, a_init, lr=5e-3, steps=2, blocks=[0, 1])
    got = adapter(xs)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    for bs, ref in zip(tuned[1::2], factors):
        for b, r in zip(bs, ref):
            torch.testing.assert_close(b, r, atol=1e-5, rtol=1e-4)
            assert b.abs().max() > 1e-3
    assert all(torch.equal(b, torch.zeros_like(b)) for b in adapter.lora_B)
    assert all(torch.equal(a, a0) for a, a0 in zip(adapter.lora_A, a_init))
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())  # the CLIP itself untouched
    assert not torch.allclose(got, tiny(xs), atol=1e-3)
    torch.testing.assert_close(adapter.predict(xs), tiny(xs), atol=1e-4, rtol=1e-4)  # B = 0: zero-shot CLIP


def test_ttl_last_blocks(tiny) -> None:
    one = TTL(tiny, lora_blocks=1, rank=4)
    assert len(one.lora_A) == 2 and one.lora_A[0].shape == (64, 4) and one._blocks == ["transformer.resblocks.1.attn"]


def test_ttl_needs_a_vit_tower() -> None:
    from tta_bench.kernel import UserError
    from tta_bench.methods.ttl import attention_blocks

    with pytest.raises(UserError, match="ViT"):
        attention_blocks(nn.Conv2d(3, 8, 3))  # e.g. a ResNet CLIP's tower
