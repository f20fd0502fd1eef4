"""Stage 4, evaluation: metrics, the free baselines, held-out scores, predictions on a user's photos."""
