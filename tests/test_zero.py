"""ZERO on the tiny random CLIP: against a plain restatement of TTA-VLM's instance_method/zero.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

pytest.importorskip("open_clip")

from test_tpt import build_tiny, test_views  # noqa: E402

from tta_bench.methods import ZERO  # noqa: E402
from tta_bench.methods.zero import zero_vote  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return build_tiny()


def official_zero(l, gamma=0.3):
    """ZERO.adaptation_process, written out (the greedy tie break; the all-masked fallback is not reached here)."""
    p = l.softmax(1)
    batch_entropy = -(p * p.log()).sum(1)
    full_idx = torch.argsort(batch_entropy, descending=False)
    l_filt = l[full_idx[: int(batch_entropy.size()[0] * gamma)]]
    p_bar = (l_filt / torch.finfo(l_filt.dtype).eps).softmax(1).sum(0)
    max_counts, scalar_pred = torch.max(p_bar, dim=-1)
    ties = [scalar_pred.item()] + [i for i in range(len(p_bar)) if i != scalar_pred and p_bar[i] == max_counts]
    if len(ties) > 1:
        k = int(l.size(0) * gamma)
        for pred in torch.argmax(l[full_idx][k:], dim=1):
            if pred in torch.tensor(ties):
                scalar_pred = pred
                break
        else:
            raise AssertionError("fallback reached")
        p_bar[scalar_pred] += 1
    return p_bar.unsqueeze(0)


def test_zero_matches_official(tiny) -> None:
    adapter = ZERO(tiny)
    adapter.views = test_views
    torch.testing.assert_close(adapter.text, tiny.text_features, atol=1e-5, rtol=1e-5)  # "a photo of a {}."
    xs = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(41))
    with torch.no_grad():
        want = torch.cat([official_zero(tiny(test_views(x))) for x in xs])
    got = adapter(xs)
    torch.testing.assert_close(got, want)
    assert torch.equal(got.sum(1), torch.full((4,), 6.0)) or (got.sum(1) == 7).any()  # int(20*0.3) votes (+1 tie)
    assert adapter.trainable_parameters() == [] and "text" not in adapter.state_dict()


def test_zero_votes_and_ties() -> None:
    eye = torch.eye(4)
    # 10 views; confident ones (big margins) first by entropy: votes for 1, 1, 2 -> class 1 wins (int(10*0.3) = 3)
    logits = torch.cat([9 * eye[[1, 1, 2]], 2 * eye[[3, 3, 0, 0, 2, 2, 2]]])
    votes = zero_vote(logits, 0.3)
    assert votes.tolist() == [0.0, 2.0, 1.0, 0.0]
    torch.testing.assert_close(votes[None], official_zero(logits))
    # a tie 1-1 between classes 1 and 2: the most confident remaining view predicting 1 or 2 breaks it
    logits = torch.cat([9 * eye[[1, 2]], 3 * eye[[0]], 2 * eye[[2]], 1 * eye[[1]], 1 * eye[[3, 3]]])
    votes = zero_vote(logits, 0.3)  # k = int(7 * 0.3) = 2; then class 0 (not tied), then class 2 (tied): +1
    assert votes.tolist() == [0.0, 1.0, 2.0, 0.0]
    torch.testing.assert_close(votes[None], official_zero(logits))
    # no remaining view predicts a tied class: the image's own logits (row 0) decide among the ties
    logits = torch.cat([10 * eye[[1, 2]], 1 * eye[[0, 3, 3, 3, 3]]])
    votes = zero_vote(logits, 0.3)  # k = 2 of 7: the image (class 1) and a view (class 2) tie 1:1
    assert votes.tolist() == [0.0, 2.0, 1.0, 0.0]
    with pytest.raises(AssertionError, match="fallback"):  # (TTA-VLM's break_sample_tie would answer class 0)
        official_zero(logits)


def test_zero_deterministic_predict(tiny) -> None:
    adapter = ZERO(tiny, n_aug=4)
    x = torch.rand(2, 3, 32, 32)
    out = adapter.predict(x)
    assert out.shape == (2, len(tiny.class_names)) and torch.equal(out, adapter.predict(x))
    assert (out.sum(1) >= 1).all()  # at least one vote (int(5 * 0.3) = 1)
