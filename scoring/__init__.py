"""The Kafka-free scoring core: a micro-batch of raw readings in, the records to publish out."""
