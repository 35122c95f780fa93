"""Where a sweep's runs execute beyond this process: cluster schedulers (`slurm`: submitit job arrays) and the log
each distributed attempt of a run leaves (`attempts`). Part of the harness: `tta_bench.sweep` calls it; nothing here
imports the leaderboard (a Slurm sweep's final leaderboard is a dependent job running the CLI)."""
