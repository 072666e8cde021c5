"""vloc: indoor visual localization and HD maps for delivery robots."""
from vloc import threads as _threads

_threads.configure()  # before numpy / torch load (see vloc.threads)

__version__ = "0.1.0"
