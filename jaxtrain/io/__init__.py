"""What a run reads and writes outside the device: checkpoints, metrics and TensorBoard
records, provenance, signals, profiles and throughput figures."""
