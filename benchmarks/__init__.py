"""Speed and memory measurements: scripts that print figures (`python -m benchmarks.memory`)."""
