"""shardtwin: shared bottom layer (vocabulary, errors, paths). Imports nothing of the project."""

__version__ = "0.1.0"
