"""vloc: indoor visual localization and HD maps for delivery robots."""
from vloc import malloc as _malloc
from vloc import threads as _threads

_threads.configure()  # before numpy / torch load (see vloc.threads)
_malloc.keep_freed_memory()  # no page faults for per-frame buffers (see vloc.malloc)

__version__ = "0.1.0"
