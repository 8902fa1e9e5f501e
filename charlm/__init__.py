"""charlm: a character-level recurrent language model in NumPy, with a command line."""

__version__ = "0.1.0"
