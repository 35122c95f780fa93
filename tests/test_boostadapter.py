"""BoostAdapter on the tiny random CLIP: against a plain restatement of TTA-VLM's boostadapter.py, and its caches."""

from __future__ import annotations

import copy
import math
import operator

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("open_clip")

from test_tda import stream  # noqa: E402
from test_tpt import build_tiny, test_views  # noqa: E402

from tta_bench.methods import BoostAdapter  # noqa: E402
from tta_bench.methods.boostadapter import add_fifo, add_sorted  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return build_tiny()


def official_update_cache(cache, pred, features_loss, shot_capacity, include_prob_map=False, fifo=True):
    item = features_loss if not include_prob_map else features_loss[:2] + [features_loss[2]]
    if pred in cache:
        cache[pred].append(item)
        if fifo:
            if len(cache[pred]) > shot_capacity:
                cache[pred] = cache[pred][1:]
        else:
            cache[pred] = sorted(cache[pred], key=operator.itemgetter(1))
            cache[pred] = cache[pred][:shot_capacity]
    else:
        cache[pred] = [item]


def official_cache_logits(image_features, cache, alpha, beta, n_classes, neg_mask_thresholds=None):
    keys, values = [], []
    for c in sorted(cache.keys()):
        for item in cache[c]:
            keys.append(item[0])
            values.append(item[2] if neg_mask_thresholds else c)
    keys = torch.cat(keys, dim=0).permute(1, 0)
    if neg_mask_thresholds:
        values = torch.cat(values, dim=0)
        values = ((values > neg_mask_thresholds[0]) & (values < neg_mask_thresholds[1])).type(torch.int8).float()
    else:
        values = F.one_hot(torch.Tensor(values).to(torch.int64), num_classes=n_classes).float()
    return alpha * ((-1) * (beta - beta * (image_features @ keys))).exp() @ values


def reference_boost(clip, xs, views, gate, delta=1, alpha=2.0, beta=5.0):
    text = clip.text_features
    pos_cache, neg_cache, outs = {}, {}, []
    with torch.no_grad():
        for x in xs:
            images = views(x) if views else x[None]
            feats = clip.encode_image(images)
            feats = feats / feats.norm(dim=-1, keepdim=True)
            logits = clip.logit_scale.exp() * feats @ text.t()
            softmaxs = logits.softmax(dim=-1)
            ents = -(softmaxs * torch.log(softmaxs + 1e-5)).sum(1)
            ent0, f0, n = ents[0], feats[0].unsqueeze(0), logits.size(1)
            pred0 = torch.max(logits[0].unsqueeze(0), 1)[1].item()
            bent = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
            idx = torch.argsort(bent, descending=False)[: int(bent.size()[0] * 0.1)] if views else torch.arange(1)
            official_update_cache(pos_cache, pred0, [f0, ent0], 3, fifo=False)
            cur = copy.deepcopy(pos_cache)
            for i in range(len(idx)):
                cur_pred = int(logits[idx][i].argmax(dim=-1).item())
                official_update_cache(cur, cur_pred, [feats[idx][i].unsqueeze(0), ents[idx][i].item()], 3 + delta,
                                      fifo=False)  # fmt: skip
            if gate[0] < ent0 / math.log2(n) and ent0 / math.log2(n) < gate[1]:
                official_update_cache(neg_cache, pred0, [f0, ent0, softmaxs[0].unsqueeze(0)], 2, True)
            out = logits[0].unsqueeze(0).clone()
            out += official_cache_logits(f0, cur, alpha, beta, n)
            if neg_cache:
                out -= official_cache_logits(f0, neg_cache, 0.117, 1.0, n, (0.03, 1.0))
            outs.append(out)
    return torch.cat(outs), pos_cache, neg_cache


@pytest.mark.parametrize("n_aug", [0, 39])
def test_boostadapter_matches_official(tiny, n_aug: int) -> None:
    xs = stream(14, seed=41)
    views = (lambda x: torch.cat([test_views(x), test_views(x.flip(-2))[1:]])) if n_aug else None  # 40: 4 boosted
    probe = BoostAdapter(tiny, n_aug=0)
    ents = []
    for x in xs:
        p = (tiny.logit_scale.exp() * tiny.encode_image(x[None]) @ probe.text.T).softmax(1)
        ents.append(float(-(p * torch.log(p + 1e-5)).sum().detach()) / math.log2(6))
    ents.sort()
    gate = ((ents[2] + ents[3]) / 2, (ents[-3] + ents[-4]) / 2)  # the negative-cache gate inside this stream
    adapter = BoostAdapter(tiny, n_aug=n_aug, neg_entropy_lower=gate[0], neg_entropy_upper=gate[1])
    if views:
        adapter.views = views
    want, pos_cache, neg_cache = reference_boost(tiny, xs, views, gate)
    torch.testing.assert_close(adapter(xs), want, atol=1e-5, rtol=1e-5)
    assert adapter.pos_cache.keys() == pos_cache.keys() and neg_cache and adapter.neg_cache.keys() == neg_cache.keys()
    assert max(len(v) for v in neg_cache.values()) == 2  # the FIFO negative cache is full somewhere
    for mine, theirs in ((adapter.pos_cache, pos_cache), (adapter.neg_cache, neg_cache)):
        for c in theirs:
            assert [it[1] for it in mine[c]] == pytest.approx([float(it[1]) for it in theirs[c]])
    assert sum(len(v) for v in adapter.pos_cache.values()) < len(xs)  # capacity reached


def test_boost_cache_rules() -> None:
    z = torch.zeros(1, 2)
    cache: dict = {}
    for e in (5.0, 3.0, 4.0, 6.0, 1.0):
        add_sorted(cache, 0, (z, e), 3)
    assert [it[1] for it in cache[0]] == [1.0, 3.0, 4.0]  # the 3 lowest, sorted
    fifo: dict = {}
    for e in (5.0, 3.0, 4.0):
        add_fifo(fifo, 1, (z, e), 2)
    assert [it[1] for it in fifo[1]] == [3.0, 4.0]  # the oldest (5.0) dropped, whatever its entropy


def test_boostadapter_predict_and_reset(tiny) -> None:
    adapter = BoostAdapter(tiny, n_aug=0)
    xs = stream(6, seed=42)
    out = adapter(xs)
    n_items = sum(len(v) for v in adapter.pos_cache.values())
    p = adapter.predict(xs)
    assert sum(len(v) for v in adapter.pos_cache.values()) == n_items and torch.equal(p, adapter.predict(xs))
    adapter.reset()
    assert adapter.pos_cache == {} and adapter.neg_cache == {}
    torch.testing.assert_close(adapter(xs), out)
    # first image, no views: its own entry in the historical cache and once more as the single boosted view
    first = BoostAdapter(tiny, n_aug=0, neg_entropy_lower=1.0)(xs[:1])  # no negative cache
    zs = (tiny.logit_scale.exp() * tiny.encode_image(xs[:1]) @ adapter.text.T).detach()
    torch.testing.assert_close(first[:, zs.argmax(1)] - zs[:, zs.argmax(1)], torch.full((1, 1), 4.0))
