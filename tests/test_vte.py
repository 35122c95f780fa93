"""VTE on the tiny random CLIP: against a plain restatement of the suite's vte.py + ZeroShotCLIP(ensemble)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

pytest.importorskip("open_clip")

from test_tpt import build_tiny, test_views  # noqa: E402

from tta_bench.methods import VTE  # noqa: E402
from tta_bench.methods._clip_tta import CLIP80, TDA7  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return build_tiny()


def reference_text(clip, templates):
    """ZeroShotCLIP.__init__ with PROMPT_MODE ensemble, written out."""
    out = []
    with torch.no_grad():
        for c_name in clip.class_names:
            emb = clip.clip.encode_text(clip.tokenize([t.format(c_name) for t in templates]))
            emb = emb / emb.norm(dim=-1, keepdim=True)
            mean = emb.mean(dim=0)
            out.append(mean / mean.norm())
    return torch.stack(out)


def test_vte_matches_official(tiny) -> None:
    adapter = VTE(tiny)
    adapter.views = test_views
    text = reference_text(tiny, CLIP80)
    torch.testing.assert_close(adapter.text, text)
    g = torch.Generator().manual_seed(13)
    xs = torch.rand(3, 3, 32, 32, generator=g)
    want = []
    with torch.no_grad():
        for x in xs:
            f = tiny.encode_image(test_views(x))
            logits = tiny.logit_scale.exp() * f @ text.T
            ent = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
            idx = torch.argsort(ent, descending=False)[: int(ent.size()[0] * 0.1)]
            want.append(tiny.logit_scale.exp() * f[idx].mean(dim=0, keepdim=True) @ text.T)
    torch.testing.assert_close(adapter(xs), torch.cat(want))
    assert adapter.trainable_parameters() == [] and "text" not in adapter.state_dict()


def test_vte_templates_and_determinism(tiny) -> None:
    assert len(CLIP80) == 80 and len(TDA7) == 7
    single = VTE(tiny, templates="model", n_aug=0)  # one template, no views: zero-shot CLIP
    torch.testing.assert_close(single.text, tiny.text_features, atol=1e-5, rtol=1e-5)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(single(x), tiny(x), atol=1e-4, rtol=1e-4)
    adapter = VTE(tiny, n_aug=4)
    assert torch.equal(adapter.predict(x), adapter.predict(x))
    from tta_bench.kernel import UserError

    with pytest.raises(UserError, match="templates"):
        VTE(tiny, templates="nope")
