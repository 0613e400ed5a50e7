"""Vigil streaming spine: Kafka in, localised alerts out."""
