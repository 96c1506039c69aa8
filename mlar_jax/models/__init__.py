"""Backbones, heads and the registry that builds a model from config."""
