"""`tea`: test-time energy adaptation (Yuan et al., CVPR 2024).

Matches yuanyige/tea@66e7ffa (`core/adazoo/energy.py` `Energy`, `forward_and_adapt`, `sample_q`, `sample_p_0`,
`init_random`; `core/param.py` `configure_model`/`collect_params` with `ADA_PARAM: [bn]`; `core/optim.py`;
`cfgs/cifar10/energy.yaml` for the defaults). The classifier's logits f(x) define an energy model with
E(x) = -logsumexp_y f(x)[y]. Per test batch x (N images), `steps` times:

1. SGLD sampling from the model (`sample_q`, the whole model in eval mode): N indices into a replay buffer
   (`torch.randint`), N fresh uniform(-1, 1) images, and each image restarts from the fresh one with probability
   `reinit_freq` (`torch.rand(N) < reinit_freq`); then `sgld_steps` steps
   x <- x + sgld_lr · ∇_x Σ logsumexp f(x) + sgld_std · ε (ε ~ N(0, 1)); the samples go back into the buffer
   at their indices. `sampling="cond"` draws a random class per sample first (`torch.randint(n_classes)`) and
   climbs f(x)[y] instead of the logsumexp.
2. the whole model in train mode: loss = -(mean logsumexp f(x) - mean logsumexp f(x_fake)), one optimizer step
   on the affine parameters of the normalisation layers (BatchNorm on test-batch statistics, running statistics
   dropped, as Tent).
3. the returned logits are a third forward of x *after* the update (the official `outputs = classify(x)`).

The replay buffer (`buffer_size` images of the batch's shape, uniform(-1, 1), held on the CPU as in the official)
is drawn from torch's global RNG at the first adapted batch (the official draws it when the adapter is built, from
the configured image size) and is part of the state `reset()` restores (the official's reset restores the model and
optimizer only; our contract restores everything). A buffer above 4 GiB is refused with a UserError naming
`buffer_size` (e.g. 10,000 ImageNet images of 224 px would take 6 GiB).

Defaults and the `cifar10-c` preset: `cfgs/cifar10/energy.yaml` (Adam lr 1e-3, betas (0.9, 0.999), wd 0, 1 step,
batch 200, SGLD 20 steps, lr 0.1, std 0.01, buffer 10,000, reinit 0.05, unconditional), completed by
`core/config.py`. The repository has no CIFAR-100-C or ImageNet-C config, so there are no presets for them.

Deviations: the official trains BatchNorm2d affine parameters only; here every BatchNorm/LayerNorm/GroupNorm
affine parameter is trained (as our Tent), so LayerNorm models (ViTs) run too; on a BatchNorm model the two agree.
Dense (segmentation) outputs are refused: TEA is a classification method (its energy is over class logits of
images it samples).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from tta_bench.kernel import UserError
from tta_bench.methods import register
from tta_bench.methods.base import (
    Adapter,
    make_optimizer,
    norm_affine_params,
    opt,
    optimizer_options,
    train_only,
    use_batch_stats,
)

_MAX_BUFFER_BYTES = 4 * 2**30


def energy_sample(
    model: nn.Module,
    buffer: torch.Tensor,
    n: int,
    steps: int,
    lr: float,
    std: float,
    reinit_freq: float,
    device: torch.device,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """SGLD samples of the model's energy (`sample_q` with `sample_p_0`); updates `buffer` in place."""
    model.eval()
    inds = torch.randint(0, len(buffer), (n,))
    fresh = torch.empty(n, *buffer.shape[1:]).uniform_(-1, 1)
    choose = (torch.rand(n) < reinit_freq).float()[:, None, None, None]
    x_k = (choose * fresh + (1 - choose) * buffer[inds]).to(device).requires_grad_(True)
    for _ in range(steps):
        logits = model(x_k)
        score = logits.logsumexp(1) if y is None else torch.gather(logits, 1, y[:, None])
        grad = torch.autograd.grad(score.sum(), [x_k])[0]
        x_k.data += lr * grad + std * torch.randn_like(x_k)
    model.train()
    samples = x_k.detach()
    buffer[inds] = samples.cpu()
    return samples


@register("tea")
class TEA(Adapter):
    """Energy-based adaptation: SGLD samples from the classifier's energy, contrastive energy loss on norm affines."""

    options = {
        **optimizer_options("adam", lr=1e-3, also=("sgd",)),
        "steps": opt(1, "adaptation steps per test batch (each: SGLD sampling, one update)"),
        "sgld_steps": opt(20, "SGLD steps per sampling (EBM.STEPS)", ">=1"),
        "sgld_lr": opt(0.1, "SGLD step size on the energy gradient (EBM.SGLD_LR)", ">=0"),
        "sgld_std": opt(0.01, "standard deviation of the SGLD noise (EBM.SGLD_STD)", ">=0"),
        "buffer_size": opt(10000, "replay-buffer images the SGLD chains restart from (EBM.BUFFER_SIZE)", ">=1"),
        "reinit_freq": opt(0.05, "probability that a chain restarts from uniform noise (EBM.REINIT_FREQ)", "[0,1]"),
        "sampling": opt(
            "uncond",
            "uncond: SGLD climbs logsumexp f(x); cond: it climbs f(x)[y] for a random class y per sample (EBM.UNCOND)",
            ("uncond", "cond"),
        ),
    }
    presets = {
        "cifar10-c": {"source": "yuanyige/tea:cfgs/cifar10/energy.yaml@66e7ffa", "batch_size": 200,
                      "options": {"optimizer": "adam", "lr": 1e-3, "betas": (0.9, 0.999), "wd": 0.0, "steps": 1,
                                  "sgld_steps": 20, "sgld_lr": 0.1, "sgld_std": 0.01, "buffer_size": 10000,
                                  "reinit_freq": 0.05, "sampling": "uncond"}},
    }  # fmt: skip

    def configure(self) -> None:
        use_batch_stats(self.model)
        self.model.train()  # the official configure_model: the whole model in train mode
        params = train_only(self.model, norm_affine_params(self.model))
        self.optimizer = make_optimizer(params, self.hp)

    def reset_state(self) -> None:
        self.replay_buffer: torch.Tensor | None = None  # drawn at the first adapted batch
        self.n_classes: int | None = None

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        out = self.model(x)
        self.model.train()
        return out

    def _buffer(self, x: torch.Tensor) -> torch.Tensor:
        if self.replay_buffer is None or self.replay_buffer.shape[1:] != x.shape[1:]:
            size = self.hp.buffer_size * x[0].numel() * 4
            if size > _MAX_BUFFER_BYTES:
                raise UserError(
                    f"Method 'tea': a replay buffer of {self.hp.buffer_size} images of shape {tuple(x.shape[1:])} "
                    f"would take {size / 2**30:.1f} GiB of memory (limit 4 GiB). Lower it, e.g. "
                    f"--set method.buffer_size={max(1, _MAX_BUFFER_BYTES // (x[0].numel() * 4))}."
                )
            self.replay_buffer = torch.empty(self.hp.buffer_size, *x.shape[1:]).uniform_(-1, 1)
        return self.replay_buffer

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise UserError(f"Method 'tea' samples images (N, C, H, W); got input of shape {tuple(x.shape)}.")
        if self.n_classes is None:  # once per reset: the number of classes (cond sampling), dense outputs refused
            with torch.no_grad():
                probe = self.infer(x)  # eval mode, BN on batch statistics: no side effect, no random draw
            if probe.dim() != 2:
                raise UserError(
                    "Method 'tea' is a classification method (its energy is over class logits); this model gives "
                    f"dense outputs of shape {tuple(probe.shape)}. Use a segmentation method such as 'tent' or "
                    "'actmad'."
                )
            self.n_classes = probe.shape[1]
        buffer = self._buffer(x)
        for _ in range(self.hp.steps):
            y = None
            if self.hp.sampling == "cond":
                y = torch.randint(0, self.n_classes, (len(x),)).to(x.device)
            x_fake = energy_sample(
                self.model, buffer, len(x), self.hp.sgld_steps, self.hp.sgld_lr, self.hp.sgld_std,
                self.hp.reinit_freq, x.device, y,
            )  # fmt: skip
            real = self.model(x)
            loss = -(real.logsumexp(1).mean() - self.model(x_fake).logsumexp(1).mean())
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            outputs = self.model(x)
        return outputs
