"""CoOp (methods/coop.py) and the CLIP zoo on the tiny random CLIP: prompts, frozen encoders, prepare."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("open_clip")

from tta_bench import methods  # noqa: E402
from tta_bench.memory import measure  # noqa: E402
from tta_bench.methods import CoOp  # noqa: E402
from tta_bench.methods._vlm import crop_flip  # noqa: E402
from tta_bench.models import ModelContext  # noqa: E402
from tta_bench.zoo.clip_zoo import clip_tiny  # noqa: E402

NAMES = ["cat", "dog", "car", "tree", "boat", "house"]


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    ctx = ModelContext(Path("/nonexistent"), Path("/nonexistent"), torch.device("cpu"))
    return clip_tiny(SimpleNamespace(name="t", class_names=NAMES), ctx)


def source(n_per: int = 8, classes=(0, 1, 2), seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (x, y): images of class c have a class-specific colour, so they are separable."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([c for c in classes for _ in range(n_per)])
    x = torch.rand(len(y), 3, 32, 32, generator=g) * 0.3
    x[:, 0] += y.view(-1, 1, 1).float() / 4
    return [(x[i : i + 8], y[i : i + 8]) for i in range(0, len(y), 8)]


def test_clip_tiny_classifier(tiny):
    x = torch.rand(5, 3, 32, 32)
    out = tiny(x)
    assert out.shape == (5, len(NAMES))
    assert torch.allclose(tiny(F.interpolate(x, size=64)).softmax(1).sum(1), torch.ones(5))  # resized inside
    tok = tiny.tokenize(["a photo of a dog."])
    a = tiny.encode_prompts(tiny.token_embedding(tok), tok)
    assert torch.allclose(a, F.normalize(tiny.clip.encode_text(tok), dim=-1), atol=1e-6)
    assert tiny.tta_info["weights"].startswith("random-init")


def test_crop_flip():
    x = torch.rand(6, 3, 32, 32)
    out = crop_flip(x)
    assert out.shape == x.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    assert not torch.equal(out, x)
    whole = crop_flip(x, scale=(1.0, 1.0), ratio=(1.0, 1.0))  # the whole image: identity or mirror, per image
    for a, b in zip(whole, x):
        assert torch.allclose(a, b, atol=1e-5) or torch.allclose(a, b.flip(-1), atol=1e-5)


def test_requires_clip():
    assert CoOp.requires == "clip"
    with pytest.raises(TypeError, match="CLIP model"):
        methods.create("coop", nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)))


def test_context_initialised_from_a_photo_of_a(tiny):
    a = CoOp(tiny)
    emb = tiny.token_embedding(tiny.tokenize(["a photo of a"]))[0, 1:5]
    assert torch.equal(a.prompt.ctx.data, emb)
    # Initial prompts are exactly the zero-shot template "a photo of a {}." of every class.
    assert torch.allclose(a.class_text(), tiny.text_features, atol=1e-5)
    x = torch.rand(4, 3, 32, 32)
    assert torch.allclose(a(x), tiny(x), atol=1e-4)


def test_prepare_learns_prompt_only(tiny):
    torch.manual_seed(0)  # prepare's shuffling draws from the global RNG: independent of the tests run before
    a = CoOp(tiny, epochs=15, lr=0.05, warmup_epochs=0, augment=False)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    ctx0 = a.prompt.ctx.detach().clone()
    data = source()
    feats = torch.cat([tiny.encode_image(x) for x, _ in data])
    labels = torch.cat([y for _, y in data])
    a.known_mask[:3] = True
    loss0 = a.step_loss(feats, labels, 0).detach().item()
    a.prepare(data)
    assert a.known_mask.tolist() == [True, True, True, False, False, False]
    assert a.step_loss(feats, labels, 0).detach().item() < loss0 - 1e-3
    assert not torch.equal(a.prompt.ctx.data, ctx0)
    for k, v in tiny.state_dict().items():  # both encoders (and the zero-shot classifier) bit-identical
        assert torch.equal(v, before[k]), k
    # Stream time is inference: no parameter moves, outputs are repeatable, nothing is trained.
    x = torch.rand(6, 3, 32, 32)
    state = {k: v.clone() for k, v in a.state_dict().items()}
    assert torch.equal(a(x), a(x))
    assert all(torch.equal(v, state[k]) for k, v in a.state_dict().items())
    assert a.trainable_parameters() == []
    assert a(x).shape == (6, len(NAMES))
    assert measure(a.prepare_step(), x)["adapt_mb"] > 0
    # The prepared state (what the runner caches) is the learned part only; the frozen CLIP stays out.
    sd = a.state_dict()
    assert "prompt.ctx" in sd and not any(k.startswith("model.") for k in sd)
    b = CoOp(tiny)
    b.load_state_dict(sd)
    assert torch.equal(b(x), a(x))


@pytest.mark.slow
def test_pretrained_clip_from_a_local_checkpoint(tmp_path):
    """A real architecture (ViT-B-32) loads from a placed open_clip checkpoint, with OpenAI's QuickGELU."""
    import open_clip

    from tta_bench.models import MODELS

    ref = open_clip.create_model("ViT-B-32", force_quick_gelu=True)
    (tmp_path / "open_clip").mkdir()
    torch.save(ref.state_dict(), tmp_path / "open_clip" / "ViT-B-32-openai.bin")
    ctx = ModelContext(tmp_path, tmp_path, torch.device("cpu"))
    model = MODELS.get("clip-vit-b32").factory(SimpleNamespace(name="t", class_names=NAMES), ctx)
    assert all(torch.equal(model.clip.state_dict()[k], v) for k, v in ref.state_dict().items())
    assert any(type(m).__name__ == "QuickGELU" for m in model.clip.modules())
    assert model.image_size == 224 and model(torch.rand(2, 3, 32, 32)).shape == (2, len(NAMES))
    assert model.tta_info["weights"].endswith("ViT-B-32-openai.bin") and len(model.tta_info["sha256"]) == 64
