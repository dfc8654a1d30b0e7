"""Configuration: the packaged defaults, presets and schema, loading with precedence, the typed settings and the run layout. Light: no torch or pandas at import (the Snakemake rules import it)."""
