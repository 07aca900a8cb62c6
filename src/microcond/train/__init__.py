"""Training: the config, the loop, its objective and batches, checkpoints, metrics logging and
the launch of data-parallel processes on CPU."""
