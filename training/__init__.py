"""Training, data loading and evaluation."""
