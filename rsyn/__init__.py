"""rsyn: the RealSyn pipeline as composable Unix-style commands."""

__version__ = "0.1.0"
