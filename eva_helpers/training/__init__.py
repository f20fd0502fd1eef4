"""Stage 3, training: the config, `fit` and its loop, checkpoints, the run folder, losses, augmentation on the GPU."""
