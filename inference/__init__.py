"""Model definition, checkpoints, batched scoring and the priority policy."""
