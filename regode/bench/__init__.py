"""``regode bench``: synthetic-motion and inter-subject benchmarks with exact ground truth."""
