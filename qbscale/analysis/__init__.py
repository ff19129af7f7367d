"""Analysis of runs: metrics, hubness, method comparisons and the HTML report."""
