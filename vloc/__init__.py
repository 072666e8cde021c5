"""vloc: indoor visual localization and HD maps for delivery robots."""
__version__ = "0.1.0"
