"""Data sources, clip sampling, augmentation and grain pipelines."""
