"""Command-line tools that sit beside the training loop."""
