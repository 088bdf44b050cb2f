"""commcomp: communication compression and robust aggregation for PyTorch distributed training."""
