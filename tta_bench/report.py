"""Human-readable output of the CLI: the per-domain results table and `list` listings."""

from __future__ import annotations

from typing import Any

from tta_bench.runner import RunResult


def _fmt(v: Any, unit: str = "") -> str:
    return "-" if v is None else f"{v:.2f}{unit}" if isinstance(v, float) else f"{v}{unit}"


def results_table(result: RunResult) -> str:
    """Per-domain table (rows: domains; a column per round), then the run's headline figures."""
    df, s = result.domains, result.summary
    piv = df.pivot_table(index="domain", columns="round", values="error", sort=False)
    width = max([len("domain")] + [len(str(d)) for d in piv.index])
    rounds = list(piv.columns)
    head = f"{'domain':<{width}}  " + "  ".join(f"{'error %' if len(rounds) == 1 else f'round {r}':>9}" for r in rounds)
    lines = [
        f"{s['method']} on {s['stream']} ({s['model']}, {s['setting']}, severity {s['severity']}, seed {s['seed']})",
        head,
        "-" * len(head),
    ]
    for dom, row in piv.iterrows():
        lines.append(f"{dom:<{width}}  " + "  ".join(f"{row[r]:9.2f}" for r in rounds))
    lines.append("-" * len(head))
    lines.append(f"{'mean':<{width}}  " + "  ".join(f"{piv[r].mean():9.2f}" for r in rounds))
    lines += [
        "",
        f"mean error {_fmt(s['mean_error'], ' %')}   ECE {_fmt(s.get('ece'), ' %')}   "
        f"clean error {_fmt(s['clean_error_before'], ' %')} -> {_fmt(s['clean_error_after'], ' %')} "
        f"(forgetting {_fmt(s['forgetting'], ' pp')})",
        f"adapt memory {_fmt(s['adapt_mb'], ' MB')}   peak device memory {_fmt(s['peak_device_mb'], ' MB')}   "
        f"{_fmt(s['images_per_s'])} images/s",
        f"{'completed run found (not run again; --force to redo)' if result.skipped else 'results'}: {result.folder}",
    ]
    if s.get("diverged"):
        lines.insert(
            -1,
            f"DIVERGED: non-finite predictions (NaN/inf) from batch {s.get('first_diverged_batch')} on, counted as "
            "errors (see `nonfinite` in batches.csv)",
        )
    return "\n".join(lines)


def print_result(result: RunResult) -> None:
    print(results_table(result))


def _presets_text(method_cls: type) -> str:
    """Continuation lines under a method in `list methods`: its official presets per benchmark family."""
    from tta_bench.presets import describe

    return "".join(f"\n      preset {line}" for line in describe(method_cls))


def list_entries(what: str = "all") -> str:
    """One line per registered method / stream / model / corruption / setting, with its description."""
    import corruptions
    import methods
    from tta_bench.models import MODELS, load_zoo
    from tta_bench.streams import SETTING_FNS, STREAMS

    load_zoo()
    sections = {
        "methods": [(e.name, e.description + _presets_text(e.factory)) for e in methods.METHODS.items()],
        "streams": [
            (e.name, e.description + f" [default model: {e.factory.default_model}; "
             f"family: {getattr(e.factory, 'family', None) or '-'}]")
            for e in STREAMS.items()
        ],  # fmt: skip
        "models": [(e.name, e.description) for e in MODELS.items()],
        "corruptions": [(n, corruptions.describe(n)) for n in corruptions.names()],
        "settings": [(n, (f.__doc__ or "").strip().splitlines()[0]) for n, f in SETTING_FNS.items()],
    }
    out = []
    for sec, rows in sections.items():
        if what not in ("all", sec):
            continue
        out.append(f"{sec}:")
        w = max((len(n) for n, _ in rows), default=0)
        out += [f"  {n:<{w}}  {d}" for n, d in rows]
    return "\n".join(out)
