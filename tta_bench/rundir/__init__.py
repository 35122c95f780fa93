"""The run folder: its one schema, its metrics and how it is written (stdlib and the kernel only: the leaderboard
imports it without torch). One concern a module:

- `schema`: file names, summary.json's keys and types, CSV columns, reading and checking a summary;
- `metrics`: the METRICS table (every result metric: label, unit, direction, format, headline, aggregation) and the
  long-horizon window rule;
- `validate`: checking a whole run folder before the leaderboard reads it;
- `writing`: building a run aside and swapping it in under a per-id lock (`tta_bench.kernel.atomic`'s machinery).

A run folder `<out>/<run id>/` holds `config.json`, `batches.csv`, `domains.csv`, `summary.json` and `done`
(written last). It is built in a private temporary folder beside it, `<out>/.<run id>.tmp-<pid>-<random>/`,
and swapped in whole by `commit` only when complete, so a reader never sees a half-written result and a
re-run (`--force`) or a crash never loses a completed one:

- with no earlier result, the temporary folder is renamed to `<out>/<run id>` (atomic);
- over an earlier one, the two folders are exchanged atomically (Linux `renameat2(RENAME_EXCHANGE)`) and the
  old one, now at the temporary name, is deleted; where that call is unavailable the old folder is renamed
  aside to `<out>/.<run id>.old-<pid>-<random>/` first, and `find_complete`/`recover` bring it back if a crash
  comes between the two renames.

`run_lock(out, run_id)` (fcntl.flock on `<out>/.<run id>.lock`) serialises runs of one id: a second
identical run waits for the first and then finds its result. `clean_stale` removes what interrupted runs left
behind (called under the lock): only folders whose writer is gone, judged by owner and lease so that runs on
other hosts or in other PID namespaces sharing `--out` keep theirs.
"""

from __future__ import annotations

from tta_bench.rundir.metrics import (
    COLLAPSE_MARGIN,
    DEFAULT_WINDOW,
    METRICS,
    Metric,
    aggregated_keys,
    core_keys,
    headline,
    metric,
    window_errors,
)
from tta_bench.rundir.schema import (
    BATCH_COLUMNS,
    BATCHES,
    CONFIG,
    DAMAGED,
    DOMAIN_COLUMNS,
    DOMAINS,
    DONE,
    MAX_DOMAINS,
    MAX_FILE_BYTES,
    MAX_NAME,
    RUN_FILES,
    RUN_ID_LENGTH,
    SUMMARY,
    SUMMARY_KEYS,
    Number,
    Summary,
    check_summary,
    is_complete,
    is_run_id,
    load_config,
    load_summary,
)
from tta_bench.rundir.validate import REQUIRED_BATCH, check_config, check_run
from tta_bench.rundir.writing import (
    clean_stale,
    commit,
    find_complete,
    is_live,
    kill_point,
    recover,
    replace_tree,
    run_lock,
    temp_folder,
    write_file,
    write_json_file,
)

__all__ = [
    "REQUIRED_BATCH", "BATCHES", "BATCH_COLUMNS", "CONFIG", "DAMAGED", "DOMAINS", "DOMAIN_COLUMNS", "DONE",
    "COLLAPSE_MARGIN", "DEFAULT_WINDOW", "MAX_DOMAINS",
    "MAX_FILE_BYTES", "MAX_NAME", "METRICS", "Metric", "Number", "RUN_FILES", "RUN_ID_LENGTH", "SUMMARY",
    "SUMMARY_KEYS", "Summary", "aggregated_keys", "check_config", "check_run", "check_summary", "clean_stale",
    "commit", "core_keys", "find_complete", "headline", "is_complete", "is_live", "is_run_id", "kill_point",
    "load_config", "load_summary", "metric", "recover", "replace_tree", "run_lock", "temp_folder",
    "window_errors", "write_file", "write_json_file",
]  # fmt: skip
