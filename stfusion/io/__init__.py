"""Atomic files and tables: the outputs Snakemake and DVC see are never half-written."""
