"""Leaderboard: a pure function of run folders -> tidy CSV tables, plots and a static HTML page."""
