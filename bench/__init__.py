"""keepflow benchmarks: each prints JSON with medians (and ratios measured in the same run)."""
