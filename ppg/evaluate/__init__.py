"""Evaluation: online on rollouts, offline on logged verdicts, and what a report shows."""
