"""CoTTA: augmentation = the official torchvision pipeline; deterministic path step for step against a
plain restatement of qinenergy/cotta cifar/cotta.py; teacher = EMA of the student; restore rate."""

from __future__ import annotations

import copy

import torch
import torchvision.transforms as T
from test_eata import confident_cnn, data

from tta_bench.methods import CoTTA
from tta_bench.methods._augment import tta_augment


class JitterPro(torch.nn.Module):
    """The official ColorJitterPro draw order: randperm(5), then one uniform factor per adjustment."""

    ranges = [(0.6, 1.4), (0.7, 1.3), (0.5, 1.5), (-0.06, 0.06), (0.7, 1.3)]

    def forward(self, img):
        import torchvision.transforms.functional as F

        for i in torch.randperm(5):
            f = torch.tensor(1.0).uniform_(*self.ranges[i]).item()
            if i == 4:
                img = img.clamp(1e-8, 1.0)
            img = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue, F.adjust_gamma][i](img, f)
        return img


def official_pipeline(n: int = 32) -> T.Compose:
    return T.Compose(
        [
            T.Lambda(lambda x: x.clip(0, 1)),
            JitterPro(),
            T.Pad(n // 2, padding_mode="edge"),
            T.RandomAffine([-15, 15], (1 / 16, 1 / 16), (0.9, 1.1), interpolation=T.InterpolationMode.BILINEAR),
            T.GaussianBlur(5, sigma=[0.001, 0.5]),
            T.CenterCrop(n),
            T.RandomHorizontalFlip(0.5),
            T.Lambda(lambda x: x + (torch.randn(x.size()) * 0.005 + 0.0).to(x.device)),
            T.Lambda(lambda x: x.clip(0, 1)),
        ]
    )


def test_augmentation_reproduces_official_pipeline() -> None:
    x = data(1, seed=9, bs=4)[0]
    pipe = official_pipeline()
    for seed in range(5):
        torch.manual_seed(seed)
        a = tta_augment(x)
        torch.manual_seed(seed)
        b = pipe(x)
        assert torch.equal(a, b)
        assert a.shape == x.shape and 0 <= a.min() and a.max() <= 1
    assert not torch.equal(tta_augment(x), tta_augment(x))


def reference_cotta(model, xs, mt, rst, ap, n_aug):
    """forward_and_adapt of cifar/cotta.py (Adam 1e-3), with the official pipeline for the augmentations."""
    source = copy.deepcopy(model.state_dict())
    ema, anchor = copy.deepcopy(model), copy.deepcopy(model)
    named = [(f"{nm}.{n}", p) for nm, m in model.named_modules() for n, p in m.named_parameters(recurse=False)]
    opt = torch.optim.Adam([p for _, p in named], lr=1e-3, betas=(0.9, 0.999))
    pipe, outs = official_pipeline(), []
    for x in xs:
        outputs = model(x)
        anchor_prob = anchor(x).softmax(1).max(1)[0]
        standard = ema(x).detach()
        augs = [ema(pipe(x)).detach() for _ in range(n_aug)]
        target = torch.stack(augs).mean(0) if anchor_prob.mean(0) < ap else standard
        (-(target.softmax(1) * outputs.log_softmax(1)).sum(1)).mean(0).backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            for pe, ps in zip(ema.parameters(), model.parameters()):
                pe.copy_(mt * pe + (1 - mt) * ps)
            for name, p in named:
                mask = (torch.rand(p.shape) < rst).float()
                p.copy_(source[name] * mask + p * (1.0 - mask))
        outs.append(target)
    return outs, ema


def test_cotta_deterministic_path_matches_official() -> None:
    """ap = 0: the anchor is always confident enough, so the pseudo-label is the plain teacher output."""
    adapter = CoTTA(confident_cnn(), ap=0.0, n_aug=3)
    ref = copy.deepcopy(adapter.model)
    xs = data(3, seed=10)
    torch.manual_seed(0)
    outs, ema = reference_cotta(ref, xs, 0.999, 0.01, 0.0, 3)
    torch.manual_seed(0)
    for x, o in zip(xs, outs):
        torch.testing.assert_close(adapter(x), o)
    for a, b in zip(adapter.model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)
    for a, b in zip(adapter.teacher.parameters(), ema.parameters()):
        torch.testing.assert_close(a, b)


def test_cotta_augmented_path_matches_official_with_same_seed() -> None:
    adapter = CoTTA(confident_cnn(), ap=1.0, n_aug=2)  # anchor confidence < 1 here: augmentation average
    ref = copy.deepcopy(adapter.model)
    xs = data(2, seed=11)
    torch.manual_seed(1)
    outs, _ = reference_cotta(ref, xs, 0.999, 0.01, 1.1, 2)
    torch.manual_seed(1)
    for x, o in zip(xs, outs):
        torch.testing.assert_close(adapter(x), o)


def test_cotta_teacher_is_ema_of_student_and_returned_before_update() -> None:
    adapter = CoTTA(confident_cnn(), ap=0.0, n_aug=1, rst=0.0, mt=0.9)
    x = data(1, seed=12)[0]
    teacher_before = [p.detach().clone() for p in adapter.teacher.parameters()]
    expected = adapter.predict(x)  # the teacher's output before the update
    torch.testing.assert_close(adapter(x), expected)
    for t0, t, s in zip(teacher_before, adapter.teacher.parameters(), adapter.model.parameters()):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * s)
    assert adapter.teacher is not adapter.model and "teacher.fc.weight" in adapter.state_dict()


def test_cotta_stochastic_restore_rate() -> None:
    full = CoTTA(confident_cnn(), ap=0.0, n_aug=1, rst=1.0)
    full(data(1, seed=13)[0])
    assert all(torch.equal(p, full.source_state[f"model.{n}"]) for n, p in full.model.named_parameters())
    part = CoTTA(confident_cnn(), ap=0.0, n_aug=1, rst=0.3)
    part(data(1, seed=13)[0])
    restored = [(p == part.source_state[f"model.{n}"]).float() for n, p in part.model.named_parameters()]
    frac = torch.cat([r.flatten() for r in restored]).mean().item()
    assert abs(frac - 0.3) < 0.05  # Adam moves every element, so only restored ones equal the source
