"""The report a person reads first (report.md, metrics.json) and the files of the Snakemake HTML report."""
