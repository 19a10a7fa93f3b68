"""Training: run folders, checkpoints and the loop. Imports torch."""
