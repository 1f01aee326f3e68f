"""Data facts: dataset descriptions and presets, readers, metadata encoding, grouped splits,
synthetic data, download."""
