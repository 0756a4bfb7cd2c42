"""align's version, in a module of its own so the run state can fingerprint it without importing the package."""

__version__ = "0.1.0"
