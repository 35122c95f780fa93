"""TPS on the tiny random CLIP: against a plain restatement of TTA-VLM's tps.py + ClipShifterTestTimeTuning_v2."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

pytest.importorskip("open_clip")

from test_tpt import build_tiny, official_avg_entropy, official_select, test_views  # noqa: E402

from tta_bench.methods import TPS  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return build_tiny()


def reference_tps(clip, xs, lr, steps):
    """Per image: shift (C,D) reset to 0 + fresh AdamW; logits with normalize(t_init + shift); predict the image."""
    with torch.no_grad():
        t = clip.clip.encode_text(clip.tokenize([f"a photo of a {n}." for n in clip.class_names]))
        text_embedding_init = t / t.norm(dim=-1, keepdim=True)
    outs, shifts = [], []
    for x in xs:
        shift = nn.Parameter(torch.zeros_like(text_embedding_init))
        opt = torch.optim.AdamW([shift], lr)

        def inference(f, shift=shift):
            tf = text_embedding_init + shift
            return clip.logit_scale.exp() * f @ (tf / tf.norm(dim=-1, keepdim=True)).t()

        with torch.no_grad():
            f = clip.encode_image(test_views(x))
        selected_idx = None
        for _ in range(steps):
            output = inference(f)
            if selected_idx is not None:
                output = output[selected_idx]
            else:
                output, selected_idx = official_select(output, 0.1)
            loss = official_avg_entropy(output)
            opt.zero_grad()
            loss.backward()
            opt.step()
        shifts.append(shift.detach().clone())
        with torch.no_grad():
            outs.append(inference(f[:1]))
    return torch.cat(outs), shifts


def test_tps_matches_official(tiny) -> None:
    adapter = TPS(tiny, steps=3, lr=5e-3)
    adapter.views = test_views
    tuned, reset = [], adapter.reset

    def recording_reset():
        tuned.append(adapter.shift.detach().clone())
        reset()

    adapter.reset = recording_reset
    xs = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(51))
    want, shifts = reference_tps(tiny, xs, lr=5e-3, steps=3)
    got = adapter(xs)
    torch.testing.assert_close(got, want)
    for s, ref in zip(tuned[1::2], shifts):  # resets come in pairs: before and after each image
        torch.testing.assert_close(s, ref)
        assert s.abs().max() > 1e-3  # every class prototype moved (AdamW: ~lr per step and coordinate)
    assert torch.equal(adapter.shift, torch.zeros_like(adapter.shift))
    assert adapter.trainable_parameters() == [adapter.shift]
    assert not torch.allclose(got, tiny(xs), atol=1e-3)


def test_tps_resets_per_sample(tiny) -> None:
    adapter = TPS(tiny, lr=5e-2)
    adapter.views = test_views
    xs = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(52))
    together = adapter(xs)
    alone = torch.cat([adapter(x[None]) for x in xs.flip(0)]).flip(0)
    torch.testing.assert_close(together, alone)
    torch.testing.assert_close(adapter.predict(xs), tiny(xs), atol=1e-4, rtol=1e-4)  # zero shift: zero-shot CLIP
