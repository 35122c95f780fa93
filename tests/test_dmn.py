"""DMN on the tiny random CLIP: against a plain restatement of TTA-VLM's online_method/dmn.py, and its memory rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

pytest.importorskip("open_clip")

from test_tda import stream  # noqa: E402
from test_tpt import build_tiny, test_views  # noqa: E402

from tta_bench.methods import DMN  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return build_tiny()


class OfficialMemoryBank:
    """TomSheng21/tta-vlm@bcc735f online_method/dmn.py MemoryBank, restated (per-class loop read-out)."""

    def __init__(self, text_fea, max_len, beta):
        c, d = text_fea.shape
        self.text_fea, self.max_len, self.beta = text_fea, max_len, beta
        self.memory = torch.zeros((c, max_len, d))
        self.ent_mem = torch.zeros((c, max_len))
        self.counts = torch.zeros(c, dtype=torch.long)

    def update(self, feature, pl, ent):
        if self.counts[pl] < self.max_len:
            self.memory[pl, self.counts[pl]] = feature
            self.ent_mem[pl, self.counts[pl]] = ent
            self.counts[pl] += 1
        else:
            replace_idx = torch.sort(self.ent_mem[pl], descending=True)[1][0]
            self.memory[pl, replace_idx] = feature
            self.ent_mem[pl, replace_idx] = ent

    def read_out(self, feature):
        rows = []
        for i in range(len(self.text_fea)):
            if self.counts[i] > 0:
                my = torch.cat([self.memory[i, : self.counts[i]], self.text_fea[i].unsqueeze(0)], dim=0)
            else:
                my = self.text_fea[i].unsqueeze(0)
            my = my / torch.norm(my, dim=1, keepdim=True)
            feature = feature / torch.norm(feature, dim=1, keepdim=True)
            wei = torch.exp(-self.beta * (1 - feature @ my.T))
            cy = wei @ my
            rows.append(cy / torch.norm(cy, dim=1, keepdim=True))
        return torch.cat(rows)


def reference_dmn(clip, xs, views, max_len, alpha=1.0, beta=5.5, top=0.1):
    text = clip.text_features  # the "a photo of a {}." prompt, L2-normalised (get_text_features)
    mem = OfficialMemoryBank(text, max_len, beta)
    outs = []
    with torch.no_grad():
        for x in xs:
            images = views(x) if views else x[None]
            image_features = clip.encode_image(images)
            image_features = image_features / image_features.norm(dim=-1, keepdim=True)
            logit_scale = clip.logit_scale.exp()
            logits = logit_scale * image_features @ text.t()
            softmax0 = logits.softmax(dim=-1)
            image_feature = image_features[0].unsqueeze(0)
            ent = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
            idx = torch.argsort(ent, descending=False)[: int(ent.size()[0] * top)] if views else torch.arange(1)
            mean_output = logits[idx].mean(dim=0).unsqueeze(0)
            mean_softmax = mean_output.softmax(dim=-1)
            pl = torch.max(mean_output, 1)[1].item()
            ent0 = -(mean_softmax * torch.log(mean_softmax + 1e-5)).sum(1)
            mem.update(image_feature, pl, ent0)
            cd = mem.read_out(image_feature)
            softmax_d = (logit_scale * image_feature @ cd.t()).softmax(dim=-1)
            outs.append(softmax0[0].unsqueeze(0) + alpha * softmax_d)
    return torch.cat(outs), mem


@pytest.mark.parametrize("n_aug", [0, 19])
def test_dmn_matches_official(tiny, n_aug: int) -> None:
    xs = stream(14, seed=21)
    adapter = DMN(tiny, n_aug=n_aug, memory_size=2)  # small memory: replacements happen within 14 images
    adapter.views = test_views
    want, mem = reference_dmn(tiny, xs, test_views if n_aug else None, max_len=2)
    got = adapter(xs)
    torch.testing.assert_close(got.exp() * 2, want, atol=1e-5, rtol=1e-5)  # log((p0 + pd) / 2)
    assert torch.equal(adapter.counts, mem.counts) and int(mem.counts.max()) == 2
    torch.testing.assert_close(adapter.memory, mem.memory, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(adapter.ent_mem, mem.ent_mem, atol=1e-6, rtol=1e-6)


def test_dmn_memory_replaces_highest_entropy_always(tiny) -> None:
    adapter = DMN(tiny, n_aug=0, memory_size=2)
    d = adapter.text.shape[1]
    f = [torch.eye(d)[i : i + 1] for i in range(4)]
    adapter.update(f[0], 1, torch.tensor(0.5))
    adapter.update(f[1], 1, torch.tensor(0.9))
    assert int(adapter.counts[1]) == 2 and adapter.ent_mem[1].tolist() == pytest.approx([0.5, 0.9])
    adapter.update(f[2], 1, torch.tensor(2.0))  # full: replaces the 0.9 entry although its own entropy is higher
    assert adapter.ent_mem[1].tolist() == pytest.approx([0.5, 2.0])
    assert torch.equal(adapter.memory[1, 1], f[2][0]) and torch.equal(adapter.memory[1, 0], f[0][0])
    adapter.update(f[3], 1, torch.tensor(0.1))
    assert adapter.ent_mem[1].tolist() == pytest.approx([0.5, 0.1]) and int(adapter.counts.sum()) == 2


def test_dmn_empty_memory_is_zero_shot_and_reset(tiny) -> None:
    adapter = DMN(tiny, n_aug=0)
    xs = stream(5, seed=22)
    # empty memory: the prototype of class c is its text feature alone, so both terms are zero-shot softmax
    zero_shot = (tiny.logit_scale.exp() * tiny.encode_image(xs) @ adapter.text.T).log_softmax(1)
    torch.testing.assert_close(adapter.predict(xs), zero_shot, atol=1e-5, rtol=1e-5)
    out = adapter(xs)
    assert int(adapter.counts.sum()) == 5
    p = adapter.predict(xs)
    assert int(adapter.counts.sum()) == 5 and not torch.allclose(p, zero_shot, atol=1e-4)
    adapter.reset()
    assert int(adapter.counts.sum()) == 0 and float(adapter.memory.abs().sum()) == 0.0
    torch.testing.assert_close(adapter(xs), out)
