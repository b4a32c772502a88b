"""Judges: who scores the evaluated speakers' lines (the Judge protocol in ppg.judges.base)."""
