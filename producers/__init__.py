"""Readings for people, demos and tests: simulated plants, dataset replays, and producing them to Kafka."""
