"""Anomaly detectors behind one small interface (see detectors.base)."""
