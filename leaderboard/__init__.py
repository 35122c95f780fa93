"""Leaderboard: a pure function of run folders -> tidy CSV tables, plots and a static HTML page.

    python -m tta_bench leaderboard --runs runs/ --out leaderboard_site/

    from tta_bench.leaderboard.site import build          # library use
    site = build("runs", "leaderboard_site")    # site.summary: DataFrame, one row per table × model × entry

Modules: collect (run folders -> DataFrames), stats (seeds aggregated, CIs, paired tests), plots, site (CSVs,
plots, index.html from templates/index.html), cli. From `tta_bench` the leaderboard imports only the kernel and the
run-folder schema (`tta_bench.rundir`): it runs without torch and without any adapter (tests/test_layers.py).
"""
