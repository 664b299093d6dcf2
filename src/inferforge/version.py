"""The version, in a module of its own: every layer may read it without importing the package's verbs."""

__version__ = "0.1.0"
