"""Dialogue data: the canonical format (schema), importers, validation and dataset building."""

FORMATS = ("consistent-llms", "synthetic-persona-chat", "chitchat", "jsonl")
"""What `ppg import --format` (and data.source's FORMAT:PATH) reads; ppg.data.importers.IMPORTERS
has one importer per name. Here, without imports, so `ppg --help` can list them cheaply."""
