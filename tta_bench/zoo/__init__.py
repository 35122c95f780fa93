"""Model architectures, one family per file; each file registers its models in `tta_bench.models.MODELS`."""
