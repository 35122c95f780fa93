"""Datasets in their real on-disk layouts, and the streams built on them (one file per family).

Every module here registers its streams in `tta_bench.streams.STREAMS` on import.
"""
