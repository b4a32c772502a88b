"""Dialogue data: the canonical format (schema), importers, validation and dataset building."""
