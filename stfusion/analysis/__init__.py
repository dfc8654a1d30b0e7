"""Reading the probability space: network- and layer-level tables, derived strategies, comparisons, ranking fidelity, figures."""
