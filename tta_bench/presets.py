"""Per-benchmark official settings of the adapters ("presets"), chosen by the stream's benchmark family.

An adapter class declares `presets = {family: {"source": "<owner/repo>:<path>", "options": {hp: value}}}`
(methods/base.py); a preset may add `"batch_size"` (the official test batch size: shown and recorded, never
applied, since one table runs every method at the same `--batch-size`) and `"note"`. A stream declares its
family at registration (`streams.register(..., family=...)`):

| family       | streams                                                             |
|--------------|---------------------------------------------------------------------|
| `cifar10-c`  | cifar10-c                                                           |
| `cifar100-c` | cifar100-c                                                          |
| `imagenet-c` | imagenet-c, imagenet-r, imagenet-a, imagenet-sketch, imagenet-v2, imagenet-ds |
| `segmentation` | gta5-cityscapes, cityscapes-acdc, camvid-c                        |

Streams no official config was written for take the family nearest to them, declared at registration: the
small-image streams trained from scratch (digits-c; the medical `<flag>-c`, pathmnist-site, camelyon17, confounded:
28-96 px images and a small BatchNorm CNN/ResNet) the CIFAR-10-C settings; the CLIP base-to-new streams
(digits-b2n, cifar100-b2n, folder-b2n, imagenet-b2n) the ImageNet ones (the CLIP methods publish only those).
A method without a preset for the family runs on its class defaults; when those are another family's settings
(e.g. EATA's are its ImageNet config) the run says so (`defaults_note`: the results header, config.json).
`RunConfig.preset` (`--preset`) chooses:
- `auto` (default): the preset of the stream's family, when the method declares one;
- `none`: the class defaults only;
- a family name: that family's preset on any stream (e.g. `--preset cifar10-c` on digits-c).

Order of precedence: class defaults < preset options < `--set method.<hp>=` overrides. The resolved options
name the run folder (so two routes to the same options share it); config.json records the preset applied.
"""

from __future__ import annotations

from typing import Any

from tta_bench.kernel import UserError, close_matches

FAMILIES = ("cifar10-c", "cifar100-c", "imagenet-c", "segmentation")
CHOICES = ("auto", "none", *FAMILIES)


def stream_family(stream: str) -> str | None:
    """The benchmark family stream `stream` declared at registration (None: no family)."""
    from tta_bench.streams import family

    return family(stream)


def chosen_family(preset: str, stream: str) -> str | None:
    """The family whose presets apply to a run: `preset` resolved against the stream (None: class defaults)."""
    if preset not in CHOICES:
        hint = close_matches(preset, CHOICES)
        raise UserError(
            f"Unknown preset '{preset}'." + (f" Did you mean: {', '.join(hint)}?" if hint else "")
            + f" Choose one of: {', '.join(CHOICES)} (--preset; auto = the stream's benchmark family)."
        )  # fmt: skip
    if preset == "none":
        return None
    return stream_family(stream) if preset == "auto" else preset


def preset_of(method_cls: type, family: str | None) -> dict[str, Any] | None:
    """The preset `method_cls` declares for `family`, or None."""
    return method_cls.presets.get(family) if family else None


def defaults_families(method_cls: type) -> list[str]:
    """The families whose declared preset is the adapter's class defaults (a non-empty preset, every option equal)."""
    d = method_cls.defaults
    return [
        f
        for f, p in method_cls.presets.items()
        if p.get("options") and all(d.get(k) == v for k, v in p["options"].items())
    ]


def defaults_note(cfg: Any, method_cls: type) -> str | None:
    """A warning when a run falls back on the adapter's class defaults (no preset for the family applies) and those
    are the settings of another benchmark family; None otherwise (or when `--preset none` asked for the defaults)."""
    family = chosen_family(cfg.preset, cfg.stream)
    own = defaults_families(method_cls)
    if cfg.preset == "none" or preset_of(method_cls, family) is not None or not own or family in own:
        return None
    why = f"stream {cfg.stream} has no benchmark family" if family is None else f"it declares no {family} preset"
    return (
        f"{cfg.method} runs on its class defaults, which are its {'/'.join(own)} settings ({why}); "
        f"--preset <family> or --set method.<hp>=... to choose"
    )


def with_preset(cfg: Any, method_cls: type) -> dict[str, Any]:
    """A run's method options before the class defaults are filled in: the preset's, then the user's overrides."""
    preset = preset_of(method_cls, chosen_family(cfg.preset, cfg.stream))
    return {**(preset["options"] if preset else {}), **cfg.method_opts}


def record(cfg: Any, method_cls: type) -> dict[str, Any]:
    """config.json's `preset`: what was asked, the family applied, its source and options, and overrides.

    `cfg` is resolved (its method options complete), so an option whose value differs from the preset's was set
    by the user (`overridden`: {option: value used}).
    """
    family = chosen_family(cfg.preset, cfg.stream)
    preset = preset_of(method_cls, family)
    out: dict[str, Any] = {"requested": cfg.preset, "stream_family": stream_family(cfg.stream), "family": None}
    if preset is None:
        return {
            **out,
            "class_defaults_from": defaults_families(method_cls) or None,
            "defaults_note": defaults_note(cfg, method_cls),
        }
    opts = preset["options"]
    return {
        **out,
        "family": family,
        "source": preset["source"],
        "options": dict(opts),
        "overridden": {k: cfg.method_opts[k] for k in opts if cfg.method_opts.get(k) != opts[k]},
        **{k: preset[k] for k in ("batch_size", "note") if k in preset},
    }


def check_presets(method_cls: type) -> None:
    """A programming check of one adapter's declaration: known families, a source, declared option names."""
    for family, preset in method_cls.presets.items():
        where = f"{method_cls.__name__}.presets[{family!r}]"
        if family not in FAMILIES:
            raise TypeError(f"{where}: unknown family; use one of {FAMILIES}")
        if not isinstance(preset.get("source"), str) or ":" not in preset["source"]:
            raise TypeError(f"{where}: 'source' must be '<owner/repo>:<path>' naming the official config file")
        unknown = set(preset.get("options", {})) - set(method_cls.defaults)
        if unknown:
            raise TypeError(f"{where}: options {sorted(unknown)} are not in the adapter's defaults")


def describe(method_cls: type) -> list[str]:
    """`list methods` lines: one per preset, `family: k=v, ... (batch N) [source]`."""
    lines = []
    for family, preset in method_cls.presets.items():
        opts = ", ".join(f"{k}={v}" for k, v in preset.get("options", {}).items()) or "class defaults"
        batch = f" (official batch {preset['batch_size']})" if "batch_size" in preset else ""
        lines.append(f"{family}: {opts}{batch} [{preset['source']}]")
    return lines
