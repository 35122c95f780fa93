"""DPE on the tiny random CLIP: against a plain restatement of TTA-VLM's online_method/dpe.py, and its parts."""

from __future__ import annotations

import math
import operator

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("open_clip")

from test_tda import stream  # noqa: E402
from test_tpt import build_tiny, test_views  # noqa: E402

from tta_bench.methods import DPE  # noqa: E402
from tta_bench.methods.dpe import info_nce  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return build_tiny()


def official_update_cache(cache, pred, features_loss, shot_capacity):
    if pred in cache:
        if len(cache[pred]) < shot_capacity:
            cache[pred].append(features_loss)
        elif features_loss[1] < cache[pred][-1][1]:
            cache[pred][-1] = features_loss
        cache[pred] = sorted(cache[pred], key=operator.itemgetter(1))
    else:
        cache[pred] = [features_loss]


def official_info_nce(query, positive_key, temperature=0.01):
    """info-nce-pytorch 0.1.4 `info_nce` with negative_keys=None, reduction mean."""
    query, positive_key = F.normalize(query, dim=-1), F.normalize(positive_key, dim=-1)
    logits = query @ positive_key.transpose(-2, -1)
    return F.cross_entropy(logits / temperature, torch.arange(len(query)), reduction="mean")


def official_avg_entropy(outputs):
    logits = outputs - outputs.logsumexp(dim=-1, keepdim=True)
    avg_logits = logits.logsumexp(dim=0) - np.log(logits.shape[0])
    avg_logits = torch.clamp(avg_logits, min=torch.finfo(avg_logits.dtype).min)
    return -(avg_logits * torch.exp(avg_logits)).sum(dim=-1)


def reference_dpe(clip, xs, views, p, predict_views=False):
    """DPE.adaptation_process (TomSheng21/tta-vlm@bcc735f) over a stream, fp32, written out."""
    glob = clip.text_features.t().clone()
    cache, num_avg, outs = {}, 0, []
    n_cls = glob.shape[1]
    for x in xs:
        local = glob.clone().detach()
        text_res = torch.zeros_like(local, requires_grad=True)
        with torch.no_grad():
            w = F.normalize(local + text_res, dim=0)
            images = views(x) if views else x[None]
            feats = clip.encode_image(images)
            feats = feats / feats.norm(dim=-1, keepdim=True)
            logits = clip.logit_scale.exp() * feats @ w
            ent = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
            sel = torch.argsort(ent, descending=False)[: int(ent.size()[0] * 0.1)] if views else torch.arange(1)
            fx = feats[sel].mean(0).unsqueeze(0)
            clip_logits = logits[sel].mean(dim=0).unsqueeze(0)
            pred = int(logits[sel].mean(0).unsqueeze(0).topk(1, 1, True, True)[1].t())
            q = clip_logits.softmax(dim=-1)
            entropy = -(q * torch.log(q + 1e-5)).sum(1)
        entropy = entropy / math.log2(n_cls)
        official_update_cache(cache, pred, [fx, entropy], p["cap"])
        keys, values, all_classes = [], [], []
        for c in sorted(cache.keys()):
            proto = torch.zeros_like(fx)
            for item in cache[c]:
                proto += item[0] / len(cache[c])
            keys.append(proto)
            values.append(c)
            all_classes.append(c)
        keys = torch.cat(keys, dim=0).permute(1, 0)
        values = F.one_hot(torch.Tensor(values).to(torch.int64), num_classes=n_cls).float()
        cache_res = torch.zeros_like(keys, requires_grad=True)
        for _ in range(1):
            opt = torch.optim.AdamW(
                [
                    {"params": [text_res], "lr": p["text_lr"], "eps": 1e-3, "weight_decay": 1e-1},
                    {"params": [cache_res], "lr": p["image_lr"], "eps": 1e-3, "weight_decay": 1e-1},
                ]
            )
            opt.zero_grad()
            w = F.normalize(local.clone() + text_res, dim=0)
            final = clip_logits.clone()
            k = F.normalize(keys.clone() + cache_res, dim=0)
            final += p["alpha"] * ((-1) * (p["beta"] - p["beta"] * (fx @ k))).exp() @ values
            loss = official_avg_entropy(final) + official_info_nce(k.T, w[:, all_classes].T) * p["align"]
            loss.backward()
            opt.step()
        with torch.no_grad():
            w = F.normalize(local.clone() + text_res, dim=0)
            if predict_views:
                cl = 100.0 * feats @ w
                e2 = -(cl.softmax(1) * cl.log_softmax(1)).sum(1)
                cl = cl[torch.argsort(e2, descending=False)[: int(e2.size()[0] * 0.1)]].mean(0).unsqueeze(0)
                f = fx.mean(0).unsqueeze(0)
            else:
                f = feats[0].unsqueeze(0)
                cl = 100.0 * f @ w
            final = cl.clone()
            k = F.normalize(keys.clone() + cache_res, dim=0)
            final += p["alpha"] * ((-1) * (p["beta"] - p["beta"] * (f @ k))).exp() @ values
            if official_avg_entropy(final) / math.log2(n_cls) < p["thr"]:
                num_avg += 1
                glob = glob * (num_avg / (num_avg + 1)) + w * (1 / (num_avg + 1))
        outs.append(final)
    return torch.cat(outs), cache, glob, num_avg


# the ImageNet ('I') row, with larger learning rates so that one AdamW step moves the prototypes visibly
P = {"cap": 3, "alpha": 6.0, "beta": 5.0, "text_lr": 0.01, "image_lr": 0.02, "align": 0.5}


@pytest.mark.parametrize("n_aug,predict_views", [(0, False), (19, False), (19, True)])
def test_dpe_matches_official(tiny, n_aug: int, predict_views: bool) -> None:
    xs = stream(12, seed=31)
    kw = dict(n_aug=n_aug, predict_views=predict_views, text_lr=P["text_lr"], image_lr=P["image_lr"])
    views = test_views if n_aug else None
    frozen, *_ = reference_dpe(tiny, xs, views, {**P, "thr": 0.0}, predict_views)  # the text never evolves
    ents = sorted((-(frozen.softmax(1) * frozen.log_softmax(1)).sum(1) / math.log2(6)).tolist())
    thr = (ents[5] + ents[6]) / 2  # the evolution gate inside this stream's entropies: some images evolve, some not
    adapter = DPE(tiny, evolve_threshold=thr, **kw)
    adapter.views = test_views
    want, cache, glob, num_avg = reference_dpe(tiny, xs, views, {**P, "thr": thr}, predict_views)
    got = adapter(xs)  # logits on the x100 scale; the fp32 rounding of two normalisations, through AdamW (eps 1e-3):
    torch.testing.assert_close(got, want, atol=5e-3, rtol=1e-4)
    torch.testing.assert_close(got.softmax(1), want.softmax(1), atol=1e-4, rtol=0)
    assert adapter.pos_cache.keys() == cache.keys() and adapter.num_avg == num_avg and 0 < num_avg < len(xs)
    for c in cache:
        assert [it[1] for it in adapter.pos_cache[c]] == pytest.approx([float(it[1]) for it in cache[c]])
    torch.testing.assert_close(adapter.weights, glob, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(glob, tiny.text_features.t(), atol=1e-4)  # the text prototypes evolved


def test_info_nce_by_hand() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    k = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    c = 1 / math.sqrt(2)
    # row 0: cosines (1, c), positive 1; row 1: cosines (0, c), positive c; temperature 0.01
    want = (-(100 - math.log(math.exp(100) + math.exp(100 * c))) - (100 * c - math.log(1 + math.exp(100 * c)))) / 2
    assert float(info_nce(q, k)) == pytest.approx(want, rel=1e-5)


def test_dpe_reset_and_predict(tiny) -> None:
    adapter = DPE(tiny, n_aug=0, evolve_threshold=1.0)  # every image evolves the text prototypes
    xs = stream(5, seed=32)
    zero_shot = 100.0 * tiny.encode_image(xs) @ adapter.text.T
    torch.testing.assert_close(adapter.predict(xs), zero_shot)  # empty cache, initial prototypes
    out = adapter(xs)
    assert adapter.num_avg == 5 and adapter.pos_cache
    w = adapter.weights.clone()
    p = adapter.predict(xs)
    assert torch.equal(adapter.weights, w) and adapter.num_avg == 5  # predict changes nothing
    assert torch.equal(p, adapter.predict(xs))
    adapter.reset()
    assert adapter.pos_cache == {} and adapter.num_avg == 0 and torch.equal(adapter.weights, adapter.text.T)
    torch.testing.assert_close(adapter(xs), out)
