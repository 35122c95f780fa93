"""Published tables as data and the command that reruns them (`python -m tta_bench reproduce`).

- `tables`: the table files (`tables/*.json`: source, protocol, cells) and their loader/validator (no torch);
- `parity`: ours vs published per cell, verdicts, the report files (no torch);
- `command`: the CLI command: the table's grid through the sweep's executors, then the parity report.
"""
