"""What every service shares: store, gRPC runtime, jobs, datasets, image I/O, config."""
