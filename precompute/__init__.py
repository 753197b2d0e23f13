"""Imagery to embedding store: the pyramid plan, batched embedding and the store format."""
