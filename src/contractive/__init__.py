"""Contractive autoencoders and their relatives, in PyTorch."""

__version__ = "0.1.0"
