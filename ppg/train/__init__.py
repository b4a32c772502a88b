"""Training: offline PPG on logged data, online PPG on rollouts, and the DeepSpeed engine they share."""
