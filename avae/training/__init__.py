"""Training a run: what a run is and how to run it (config), the training loop (train), its steps
(steps) and exact resume (resume), safetensors checkpoints (checkpoint), a run directory's files (runs),
its model card (card) and image grids (images)."""
