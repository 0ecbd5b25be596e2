"""The model lifecycle: training frames, training, evaluation, promotion, batch scoring, drift, tracking."""
