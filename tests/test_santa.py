"""SANTA: step for step against a plain restatement of mariodoebler/test-time-adaptation
classification/methods/santa.py (explicit encoder/classifier split of the small CNN, SupCon of
HobbitLong/SupContrast written out); prototypes are the class means of the source features; the anchor stays."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_cotta import official_pipeline
from test_eata import confident_cnn

from tta_bench.methods import SANTA


def source_batches(n: int = 2, bs: int = 8, seed: int = 51) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Clean source batches of k/255 images (as decoded image files), every class present."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 256, (bs, 3, 32, 32), generator=g) / 255, torch.arange(bs) % 5) for _ in range(n)]


def tiny_vit() -> nn.Module:
    """A 2-block torchvision ViT (LayerNorm only, 5 classes) with a random head (torchvision's is zero)."""
    import torchvision

    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5
    )
    nn.init.normal_(vit.heads.head.weight, std=2.0)
    return vit.eval()


def assert_trains_layernorm(adapter, xs) -> None:
    """Adapting changes LayerNorm affine parameters and gives finite logits."""
    norms = [m for m in adapter.model.modules() if isinstance(m, nn.LayerNorm)]
    before = [m.weight.detach().clone() for m in norms]
    for x in xs:
        assert torch.isfinite(adapter(x)).all()
    assert any(not torch.equal(m.weight, b) for m, b in zip(norms, before))


def stream_batches(n: int, seed: int, bs: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(bs, 3, 32, 32, generator=g) for _ in range(n)]


def encoder(model):
    """split_up_model for the small CNN: everything up to the pooled, flattened features."""
    return lambda x: model.pool(model.features((x - 0.5) / 0.5)).flatten(1)


def official_prototypes(fe, source, num_classes):
    feats, labels = torch.tensor([]), torch.tensor([])
    with torch.no_grad():
        for x, y in source:
            f = fe(x)
            feats = torch.cat([feats, f.view(f.shape[:2])], dim=0)
            labels = torch.cat([labels, y], dim=0)
    protos = torch.cat([feats[labels == i].mean(dim=0, keepdim=True) for i in range(num_classes)], dim=0)
    return protos.unsqueeze(1)


def supcon(features, projector, temperature=0.1):
    """SupContrast's SupConLoss, contrast_mode 'all', labels = mask = None."""
    batch_size = features.shape[0]
    mask = torch.eye(batch_size, dtype=torch.float32)
    contrast_count = features.shape[1]
    contrast_feature = F.normalize(projector(torch.cat(torch.unbind(features, dim=1), dim=0)), p=2, dim=1)
    anchor_feature, anchor_count = contrast_feature, contrast_count
    anchor_dot_contrast = torch.div(torch.matmul(anchor_feature, contrast_feature.T), temperature)
    logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
    logits = anchor_dot_contrast - logits_max.detach()
    mask = mask.repeat(anchor_count, contrast_count)
    logits_mask = torch.scatter(torch.ones_like(mask), 1, torch.arange(batch_size * anchor_count).view(-1, 1), 0)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    return (-(temperature / temperature) * mean_log_prob_pos).view(anchor_count, batch_size).mean()


def prototype_views(protos, f, fa):
    with torch.no_grad():
        dist = F.cosine_similarity(
            protos.repeat(1, f.shape[0], 1), f.view(1, f.shape[0], f.shape[1]).repeat(protos.shape[0], 1, 1), dim=-1
        )
        _, indices = dist.topk(1, largest=True, dim=0)
        indices = indices.squeeze(0)
    return torch.cat([protos[indices], f.view(f.shape[0], 1, f.shape[1]), fa.view(f.shape[0], 1, f.shape[1])], dim=1)


def norm_configure(model: nn.Module) -> None:
    model.eval()
    model.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.requires_grad_(True)
            m.track_running_stats, m.running_mean, m.running_var = False, None, None


def reference_santa(model, projector, source, xs, seed0):
    norm_configure(model)
    params = [p for m in model.modules() for n, p in m.named_parameters(recurse=False) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999))
    anchor = copy.deepcopy(model)
    for p in anchor.parameters():
        p.detach_()
    fe = encoder(model)
    protos = official_prototypes(fe, source, 5)
    opt.add_param_group({"params": projector.parameters(), "lr": opt.param_groups[0]["lr"]})
    pipe, outs = official_pipeline(), []
    for step, x in enumerate(xs):
        torch.manual_seed(seed0 + step)
        f = fe(x)
        o = model.fc(f)
        fa = fe(pipe(x))
        oa = model.fc(fa)
        o_anchor = anchor(x)
        loss_cont = supcon(prototype_views(protos, f, fa), projector)
        loss_st = (
            -0.5 * (o.softmax(1) * o_anchor.log_softmax(1)).sum(1)
            - 0.5 * (oa.softmax(1) * o_anchor.log_softmax(1)).sum(1)
        ).mean(0)
        (1.0 * loss_st + 1.0 * loss_cont).backward()
        opt.step()
        opt.zero_grad()
        outs.append(o.detach())
    return outs, protos.squeeze(1)


def test_santa_matches_official() -> None:
    adapter = SANTA(confident_cnn())
    ref, projector = confident_cnn(), copy.deepcopy(adapter.projector)
    source, xs = source_batches(), stream_batches(3, seed=52)
    adapter.prepare(source)
    outs, protos = reference_santa(ref, projector, source, xs, seed0=500)
    torch.testing.assert_close(adapter.prototypes, protos)
    for step, (x, o) in enumerate(zip(xs, outs)):
        torch.manual_seed(500 + step)
        torch.testing.assert_close(adapter(x), o)
    for p, q in zip(
        list(adapter.model.parameters()) + list(adapter.projector.parameters()),
        list(ref.parameters()) + list(projector.parameters()),
    ):
        torch.testing.assert_close(p, q)
    assert any(not torch.equal(p, adapter.source_state[f"model.{n}"]) for n, p in adapter.model.named_parameters())
    for n, p in adapter.anchor.named_parameters():  # the source anchor never moves
        assert torch.equal(p, adapter.source_state[f"anchor.{n}"])


def test_models_without_a_final_linear_classifier_are_refused() -> None:
    convnet = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(TypeError, match="no nn.Linear"):
        SANTA(convnet)
    scaled = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5), nn.Tanh()
    )
    with pytest.raises(TypeError, match="last nn.Linear"):
        SANTA(scaled)(stream_batches(1, seed=1)[0])


def test_prototypes_need_every_class_and_library_use_without_prepare_has_no_contrast() -> None:
    adapter = SANTA(confident_cnn())
    with pytest.raises(Exception, match="classes \\[4\\]"):
        adapter.prepare([(x[:4], y[:4]) for x, y in source_batches()])
    plain, no_cont = SANTA(confident_cnn()), SANTA(confident_cnn(), lambda_cont=0.0)
    no_cont.prepare(source_batches())
    for step, x in enumerate(stream_batches(2, seed=53)):
        torch.manual_seed(step)
        a = plain(x)
        torch.manual_seed(step)
        torch.testing.assert_close(a, no_cont(x))


def test_santa_adapts_layernorm_on_a_tiny_vit() -> None:
    adapter = SANTA(tiny_vit())
    adapter.prepare(source_batches())
    assert_trains_layernorm(adapter, stream_batches(2, seed=70))
