"""Human-readable output of the CLI: the per-domain results table and `list` listings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tta_bench import rundir
from tta_bench.kernel import UserError

if TYPE_CHECKING:
    from tta_bench.runner import RunResult


def _fmt(v: Any, unit: str = "") -> str:
    return "-" if v is None else f"{v:.2f}{unit}" if isinstance(v, float) else f"{v}{unit}"


def _applies_severity(df) -> bool:
    return "severity" in df and df["severity"].notna().any()


def forgetting_text(s: dict[str, Any], folder) -> str:
    """The clean-error line: before -> after (forgetting), or why forgetting is absent."""
    if s.get("forgetting") is not None:
        return (
            f"clean error {_fmt(s['clean_error_before'], ' %')} -> {_fmt(s['clean_error_after'], ' %')} "
            f"(forgetting {_fmt(s['forgetting'], ' pp')})"
        )
    try:
        clean_eval = rundir.load_config(folder)["config"].get("clean_eval")
    except (UserError, OSError, KeyError):
        clean_eval = None
    if clean_eval == "off":
        return "forgetting not measured (--clean-eval off)"
    try:
        why = rundir.load_config(folder)["clean_split"]["not_measured_because"]
    except (UserError, OSError, KeyError, TypeError):
        why = None
    return "forgetting not measured: this stream has no held-out clean split" + (f" ({why})" if why else "")


def settings_text(s: dict[str, Any], folder) -> str | None:
    """The header's settings line: the preset applied (family and source) or the class defaults, with a warning when
    those are another benchmark family's settings (config.json's `preset`); None for a run folder without it."""
    try:
        p = rundir.load_config(folder)["preset"]
    except (UserError, OSError, KeyError, TypeError):
        return None
    if not isinstance(p, dict):
        return None
    if p.get("family"):
        over = f", overridden: {p['overridden']}" if p.get("overridden") else ""
        return f"settings: {s['method']}'s {p['family']} preset [{p.get('source')}]{over}"
    note = p.get("defaults_note")
    return f"settings: {s['method']}'s class defaults" + (f" -- WARNING: {note}" if note else "")


def results_table(result: RunResult) -> str:
    """Per-domain table (rows: domains; the task's headline per-domain metric(s) and error, or a column per round),
    then the run's headline figures first (mIoU, balanced error and AUC, base/new/HM, or error) and only what
    applies (no severity for streams without one, peak device memory only where measured)."""
    df, s = result.domains, result.summary
    head = rundir.headline(s.get("task"), [k for k, v in s.items() if v is not None])
    cols = [(f"{m.label} %", m.key) for m in head if m.key in df and df[m.key].notna().any()] + [("error %", "error")]
    rounds = sorted(df["round"].unique())
    if len(rounds) > 1:
        title, key = cols[0]
        piv = df.pivot_table(index="domain", columns="round", values=key, sort=False)
        headers = [f"{title.split(' %')[0]} r{r}" for r in rounds]
        values = [piv[r] for r in rounds]
    else:
        piv = df.pivot_table(index="domain", values=[k for _, k in cols], sort=False)
        headers = [t for t, _ in cols]
        values = [piv[k] for _, k in cols]
    width = max([len("domain")] + [len(str(d)) for d in piv.index])
    cw = max([9] + [len(h) for h in headers])
    header = f"{'domain':<{width}}  " + "  ".join(f"{h:>{cw}}" for h in headers)
    sev = f", severity {s['severity']}" if _applies_severity(df) else ""
    lines = [f"{s['method']} on {s['stream']} ({s['model']}, {s['setting']}{sev}, seed {s['seed']})"]
    lines += [t for t in [settings_text(s, result.folder)] if t] + [header]
    lines.append("-" * len(header))
    for dom in piv.index:
        lines.append(f"{dom:<{width}}  " + "  ".join(f"{v[dom]:{cw}.2f}" for v in values))
    lines.append("-" * len(header))
    lines.append(f"{'mean':<{width}}  " + "  ".join(f"{v.mean():{cw}.2f}" for v in values))
    headline = "   ".join(f"{m.label} {_fmt(s.get(m.key), ' %')} ({m.arrow})" for m in head)
    error = "" if head[0].key == "mean_error" else f"   mean error {_fmt(s['mean_error'], ' %')}"
    peak = f"   peak device memory {_fmt(s['peak_device_mb'], ' MB')}" if s.get("peak_device_mb") is not None else ""
    lines += [
        "",
        f"{headline}{error}   ECE {_fmt(s.get('ece'), ' %')}",
        forgetting_text(s, result.folder),
        f"adapt memory {_fmt(s['adapt_mb'], ' MB')}{peak}   {_fmt(s['images_per_s'])} images/s",
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


def list_entries(what: str = "all", verbose: bool = False) -> str:
    """One line per registered method / stream / model / corruption / setting, with its description; `verbose`:
    each method's options (default and meaning) and each stream's clean split too. The registries' rows come from
    `tta_bench.catalogue` (cached: no torch once built); settings are pure Python (`tta_bench.settings`)."""
    from tta_bench import settings

    sections: dict[str, list[tuple[str, str]]] = {}
    if what in ("all", "methods", "streams", "models", "corruptions"):
        from tta_bench import catalogue

        rows = catalogue.load()["sections"]
        for sec in catalogue.SECTIONS:
            sections[sec] = [(name, more if verbose else text) for name, text, more in rows[sec]]
    sections["settings"] = [(n, settings.describe(n)) for n in settings.SETTINGS]
    out = []
    for sec, rows_ in sections.items():
        if what not in ("all", sec):
            continue
        out.append(f"{sec}:")
        w = max((len(n) for n, _ in rows_), default=0)
        out += [f"  {n:<{w}}  {d}" for n, d in rows_]
    return "\n".join(out)
