"""Scoring strategies with the supernet's shared weights: naive (every strategy on every clip), prefix-shared, racing."""
