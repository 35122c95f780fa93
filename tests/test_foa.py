"""FOA (methods/foa.py): equivalence with the official rule (mr-eggplant/FOA tta_library/foa.py, models/vpt.py at
004b02d) written out here on a tiny torchvision ViT over several batches — returned logits, the prompts kept, the
test statistics μ_hist —, the source statistics of `prepare`, the prompt-free features reproducing the model's own
logits (torchvision and timm ViTs, behind the zoo's input normalisation), forward-only (no weight, no gradient
changes), and the errors: a CNN, a batch of one sample.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from torchvision.models import VisionTransformer

from tta_bench.kernel import UserError
from tta_bench.methods import create
from tta_bench.methods._prompt_vit import PromptViT
from tta_bench.models import Normalized

cma = pytest.importorskip("cma", reason="FOA's CMA-ES is the cma package (a dependency of tta_bench)")

C, D, P, POP = 5, 16, 2, 6


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    vit = VisionTransformer(32, 8, num_layers=2, num_heads=2, hidden_dim=D, mlp_dim=32, num_classes=C)
    with torch.no_grad():
        vit.heads.head.weight.normal_(0, 0.5)
        for m in vit.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.8, 1.2), m.bias.uniform_(-0.1, 0.1)
    return vit.eval()


def data(n: int, seed: int, bs: int = 8, shift: float = 0.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(bs, 3, 32, 32, generator=g) * 0.6 + shift for _ in range(n)]


# --- the official rule, written out (vpt.py's layers_cls_features_with_prompts, foa.py's forward) ----------------
def official_features(vit: VisionTransformer, x: torch.Tensor, prompts: torch.Tensor | None) -> torch.Tensor:
    n = x.shape[0]
    x = vit.conv_proj(x).reshape(n, D, -1).permute(0, 2, 1)
    x = torch.cat([vit.class_token.expand(n, -1, -1), x], dim=1) + vit.encoder.pos_embedding
    if prompts is not None:
        x = torch.cat((x[:, :1, :], prompts.expand(n, -1, -1), x[:, 1:, :]), dim=1)
    layers, feats = vit.encoder.layers, []
    for i in range(len(layers)):
        x = layers[i](x)
        feats.append(layers[i + 1].ln_1(x[:, 0]) if i < len(layers) - 1 else vit.encoder.ln(x[:, 0]))
    return torch.cat(feats, dim=1)


def official_run(vit, source, stream, init_prompts, lam=0.4):
    with torch.no_grad():
        train_info = torch.std_mean(torch.cat([official_features(vit, x, None) for x in source]), dim=0)
        es = cma.CMAEvolutionStrategy(P * D * [0], 1, inopts={"seed": 2020, "popsize": POP, "maxiter": -1,
                                                              "verbose": -9})  # fmt: skip
        best_prompts, hist, outs, kept, hists = init_prompts.reshape(1, P, D), None, [], [], []
        for x in stream:
            shift = None if hist is None else train_info[1][-D:] - hist
            best_loss, best_outputs, batch_means = np.inf, None, []
            prompts, losses = es.ask() + [best_prompts.flatten().cpu()], []
            for prompt in prompts:
                cur = torch.tensor(np.asarray(prompt), dtype=torch.float).reshape(1, P, D)
                features = official_features(vit, x, cur)
                batch_std, batch_mean = torch.std_mean(features, dim=0)
                disc = lam * (((batch_std - train_info[0]) ** 2).sum() + ((batch_mean - train_info[1]) ** 2).sum())
                disc = disc * x.shape[0] / 64
                cls = features[:, -D:]
                output = vit.heads(cls)
                loss = disc + (-(output.softmax(1) * output.log_softmax(1)).sum(1)).sum()
                if shift is not None:
                    output = vit.heads(cls + 1.0 * shift)
                batch_means.append(batch_mean[-D:].unsqueeze(0))
                if best_loss > loss.item():
                    best_prompts, best_loss, best_outputs = cur, loss.item(), output
                losses.append(loss.item())
            es.tell(prompts, losses)
            bm = torch.cat(batch_means, dim=0).mean(0)
            hist = bm if hist is None else 0.9 * hist + 0.1 * bm
            outs.append(best_outputs), kept.append(best_prompts.reshape(P, D).clone()), hists.append(hist.clone())
    return outs, kept, hists, train_info


def test_foa_matches_the_official_rule_over_several_batches() -> None:
    vit = tiny_vit()
    source, stream = data(2, 1), data(3, 2, shift=0.3)
    state = np.random.get_state()
    foa = create("foa", vit, num_prompts=P, popsize=POP)
    foa.prepare([(x, torch.zeros(len(x))) for x in source])
    init = foa.prompts.clone()
    got, kept, hists = [], [], []
    for x in stream:
        got.append(foa(x))
        kept.append(foa.prompts.clone()), hists.append(foa.hist_stat.clone())
    assert np.all(np.random.get_state()[1] == state[1])  # CMA-ES used its own generator, not numpy's global one
    want, want_kept, want_hists, train_info = official_run(vit, source, stream, init)
    torch.testing.assert_close(foa.src_std, train_info[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(foa.src_mean, train_info[1], rtol=0, atol=1e-6)
    for g, w, k, wk, h, wh in zip(got, want, kept, want_kept, hists, want_hists):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(k, wk, rtol=0, atol=1e-6)
        torch.testing.assert_close(h, wh, rtol=1e-5, atol=1e-6)
    assert not torch.equal(kept[-1], init)  # the search moved the prompts
    assert foa.es.countiter == 3


def test_foa_is_forward_only_and_reset_restores_the_search() -> None:
    vit = tiny_vit()
    foa = create("foa", vit, num_prompts=P, popsize=POP)
    foa.prepare([(x, None) for x in data(2, 1)])
    foa.snapshot()
    w0 = {k: v.clone() for k, v in foa.model.state_dict().items()}
    xs = data(2, 2, shift=0.3)
    first = [foa(x) for x in xs]
    assert foa.trainable_parameters() == [] and all(p.grad is None for p in foa.model.parameters())
    assert all(torch.equal(v, w0[k]) for k, v in foa.model.state_dict().items())  # weights untouched
    # activation shifting: predict() is the head on the last class token moved by μ_src - μ_hist
    cls = official_features(vit, xs[1], foa.prompts.unsqueeze(0))[:, -D:]
    shifted = vit.heads(cls + foa.src_mean[-D:] - foa.hist_stat)
    torch.testing.assert_close(foa.predict(xs[1]), shifted, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(shifted, vit.heads(cls), atol=1e-3)
    foa.reset()
    assert foa.hist_stat is None and foa.es.countiter == 0
    again = [foa(x) for x in xs]
    for a, b in zip(first, again):
        assert torch.equal(a, b)


def test_prompt_free_features_give_the_models_own_logits() -> None:
    x = data(1, 3)[0]
    vit = tiny_vit()
    wrapped = Normalized(copy.deepcopy(vit), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    pv = PromptViT(wrapped, "foa")
    with torch.no_grad():
        torch.testing.assert_close(pv.head(pv.features(x, None)[:, -D:]), wrapped(x), rtol=1e-5, atol=1e-5)
        assert pv.features(x, torch.zeros(3, D)).shape == (8, 2 * D)
    timm = pytest.importorskip("timm", reason="timm ViT check (optional extra)")
    torch.manual_seed(0)
    tv = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=D, depth=2, num_heads=2, num_classes=C
    ).eval()
    pt = PromptViT(tv, "foa")
    with torch.no_grad():
        torch.testing.assert_close(pt.head(pt.features(x, None)[:, -D:]), tv(x), rtol=1e-5, atol=1e-5)
    assert pt.prompt_init_bound() == pytest.approx((6 / (3 * 64 + D)) ** 0.5)


def test_foa_refuses_a_cnn_and_a_batch_of_one() -> None:
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, C))
    with pytest.raises(UserError, match="Vision Transformer.*--model vit-b-16"):
        create("foa", cnn)
    foa = create("foa", tiny_vit(), num_prompts=P, popsize=POP)
    with pytest.raises(UserError, match="batch size of 2 or more"):
        foa(data(1, 1)[0][:1])
