"""Training and evaluation machinery: the training loop with resume, checkpoints, evaluation, distributed data parallel."""
