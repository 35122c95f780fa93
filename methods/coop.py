"""`coop`: Context Optimization, learned prompts for CLIP (Zhou et al., "Learning to Prompt for
Vision-Language Models", IJCV 2022).

A finetuning baseline, not an online method: `prepare(source)` learns M context vectors shared by all
classes (initialised from "a photo of a", M = 4) with both CLIP encoders frozen, by cross-entropy over
the known (source) classes' prompts; on the stream the adapter is frozen and classifies over all classes
with the learned context (base-to-new protocol of CoCoOp/OGEN). Schedule and hyper-parameters: the
base-to-new CoOp config `vit_b16_ep10_ctxv1` (SGD lr 0.002, 10 epochs, cosine, 1 warm-up epoch at 1e-5),
see methods/_vlm.py. Needs a CLIP model (`requires = "clip"`; a plain classifier raises TypeError).
"""

from __future__ import annotations

from tta_bench.methods import register
from tta_bench.methods._vlm import PromptAdapter


@register("coop")
class CoOp(PromptAdapter):
    """CoOp: learned unified prompt context on few-shot base classes; frozen at stream time."""
