"""Lineage: what made an output (the code a stage runs, the record of a pipeline run) and rebuilding a
registered version from that record."""
