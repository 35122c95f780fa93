"""TDA on the tiny random CLIP: against a plain restatement of kdiAAA/TDA's run_test_tda, and its cache rule."""

from __future__ import annotations

import math
import operator

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("open_clip")

from test_tpt import build_tiny, test_views  # noqa: E402
from test_vte import reference_text  # noqa: E402

from tta_bench.methods import TDA  # noqa: E402
from tta_bench.methods._clip_tta import TDA7  # noqa: E402
from tta_bench.methods.tda import update_cache  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return build_tiny()


def official_update_cache(cache, pred, features_loss, shot_capacity, include_prob_map=False):
    item = features_loss if not include_prob_map else features_loss[:2] + [features_loss[2]]
    if pred in cache:
        if len(cache[pred]) < shot_capacity:
            cache[pred].append(item)
        elif features_loss[1] < cache[pred][-1][1]:
            cache[pred][-1] = item
        cache[pred] = sorted(cache[pred], key=operator.itemgetter(1))
    else:
        cache[pred] = [item]


def official_cache_logits(image_features, cache, alpha, beta, n_classes, neg_mask_thresholds=None):
    cache_keys, cache_values = [], []
    for class_index in sorted(cache.keys()):
        for item in cache[class_index]:
            cache_keys.append(item[0])
            cache_values.append(item[2] if neg_mask_thresholds else class_index)
    cache_keys = torch.cat(cache_keys, dim=0).permute(1, 0)
    if neg_mask_thresholds:
        cache_values = torch.cat(cache_values, dim=0)
        lo, hi = neg_mask_thresholds
        cache_values = ((cache_values > lo) & (cache_values < hi)).type(torch.int8).float()
    else:
        cache_values = F.one_hot(torch.Tensor(cache_values).to(torch.int64), num_classes=n_classes).float()
    affinity = image_features @ cache_keys
    return alpha * ((-1) * (beta - beta * affinity)).exp() @ cache_values


def official_clip_logits(images, clip, clip_weights):
    image_features = clip.encode_image(images)
    image_features /= image_features.norm(dim=-1, keepdim=True)
    clip_logits = 100.0 * image_features @ clip_weights
    if image_features.size(0) > 1:
        ent = -(clip_logits.softmax(1) * clip_logits.log_softmax(1)).sum(1)
        selected_idx = torch.argsort(ent, descending=False)[: int(ent.size()[0] * 0.1)]
        output = clip_logits[selected_idx]
        image_features = image_features[selected_idx].mean(0).unsqueeze(0)
        clip_logits = output.mean(0).unsqueeze(0)
        logits = output - output.logsumexp(dim=-1, keepdim=True)
        avg = torch.clamp(logits.logsumexp(dim=0) - np.log(logits.shape[0]), min=torch.finfo(logits.dtype).min)
        loss = -(avg * torch.exp(avg)).sum(dim=-1)
        prob_map = output.softmax(1).mean(0).unsqueeze(0)
        pred = int(output.mean(0).unsqueeze(0).topk(1, 1, True, True)[1].t())
    else:
        loss = -(clip_logits.softmax(1) * clip_logits.log_softmax(1)).sum(1)
        prob_map = clip_logits.softmax(1)
        pred = int(clip_logits.topk(1, 1, True, True)[1].t()[0])
    return image_features, clip_logits, loss, prob_map, pred


def reference_tda(clip, xs, views, pos, neg):
    clip_weights = reference_text(clip, TDA7).T
    pos_cache, neg_cache, outs = {}, {}, []
    with torch.no_grad():
        for x in xs:
            images = views(x) if views else x[None]
            image_features, clip_logits, loss, prob_map, pred = official_clip_logits(images, clip, clip_weights)
            prop_entropy = float(loss / math.log2(clip_weights.size(1)))
            official_update_cache(pos_cache, pred, [image_features, loss], pos["shot_capacity"])
            if neg["lower"] < prop_entropy < neg["upper"]:
                official_update_cache(neg_cache, pred, [image_features, loss, prob_map], neg["shot_capacity"], True)
            final = clip_logits.clone()
            if pos_cache:
                n = len(clip_weights.T)
                final += official_cache_logits(image_features, pos_cache, pos["alpha"], pos["beta"], n)
            if neg_cache:
                final -= official_cache_logits(
                    image_features, neg_cache, neg["alpha"], neg["beta"], len(clip_weights.T), (0.03, 1.0)
                )
            outs.append(final)
    return torch.cat(outs), pos_cache, neg_cache


POS = {"shot_capacity": 3, "alpha": 2.0, "beta": 5.0}


def stream(n: int, seed: int) -> torch.Tensor:
    """Images around a few prototypes, so that classes repeat and caches fill and replace."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(3, 3, 32, 32, generator=g)
    return (protos[torch.arange(n) % 3] + 0.15 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("n_aug", [0, 19])
def test_tda_matches_official(tiny, n_aug: int) -> None:
    xs = stream(14, seed=14)
    adapter = TDA(tiny, n_aug=n_aug)
    adapter.views = test_views
    ents = sorted(adapter.clip_logits(x)[2] / math.log2(len(tiny.class_names)) for x in xs)
    lo, hi = (ents[2] + ents[3]) / 2, (ents[-3] + ents[-4]) / 2  # the negative-cache gate inside this stream
    neg = {"shot_capacity": 2, "alpha": 0.117, "beta": 1.0, "lower": lo, "upper": hi}
    adapter = TDA(tiny, n_aug=n_aug, neg_entropy_lower=lo, neg_entropy_upper=hi)
    adapter.views = test_views
    want, pos_cache, neg_cache = reference_tda(tiny, xs, test_views if n_aug else None, POS, neg)
    torch.testing.assert_close(adapter(xs), want, atol=1e-4, rtol=1e-5)  # logits on CLIP's x100 scale
    assert adapter.pos_cache.keys() == pos_cache.keys() and neg_cache
    assert adapter.neg_cache.keys() == neg_cache.keys()
    for mine, theirs in ((adapter.pos_cache, pos_cache), (adapter.neg_cache, neg_cache)):
        for c in theirs:
            assert [it[1] for it in mine[c]] == pytest.approx([float(it[1]) for it in theirs[c]])
    assert sum(len(v) for v in adapter.pos_cache.values()) < len(xs)  # capacity reached: replacements happened


def test_tda_cache_capacity_and_replacement() -> None:
    cache: dict = {}
    for loss in (5.0, 3.0, 4.0):
        update_cache(cache, 1, (torch.zeros(1, 2), loss), 3)
    assert [it[1] for it in cache[1]] == [3.0, 4.0, 5.0]  # sorted by loss
    update_cache(cache, 1, (torch.zeros(1, 2), 6.0), 3)  # full, worse than the worst: dropped
    assert [it[1] for it in cache[1]] == [3.0, 4.0, 5.0]
    update_cache(cache, 1, (torch.zeros(1, 2), 1.0), 3)  # full, better: replaces the worst
    assert [it[1] for it in cache[1]] == [1.0, 3.0, 4.0]
    update_cache(cache, 0, (torch.zeros(1, 2), 9.0), 3)
    assert sorted(cache) == [0, 1] and len(cache[0]) == 1


def test_tda_reset_and_predict(tiny) -> None:
    adapter = TDA(tiny)
    xs = stream(6, seed=15)
    out = adapter(xs)
    assert adapter.pos_cache
    n_items = sum(len(v) for v in adapter.pos_cache.values())
    p = adapter.predict(xs)
    assert sum(len(v) for v in adapter.pos_cache.values()) == n_items  # predict does not update the caches
    assert torch.equal(p, adapter.predict(xs))
    adapter.reset()
    assert adapter.pos_cache == {} and adapter.neg_cache == {}
    torch.testing.assert_close(adapter(xs), out)
    zero_shot = 100.0 * tiny.encode_image(xs[:1]) @ adapter.text.T
    torch.testing.assert_close(
        TDA(tiny)(xs[:1]), zero_shot + 2.0 * torch.ones(1, 1) * F.one_hot(zero_shot.argmax(1), zero_shot.shape[1])
    )  # first image: its own cache entry, affinity 1, exp(0) = 1
