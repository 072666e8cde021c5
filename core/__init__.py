"""vloc core: the vocabulary every floor imports (Camera, Rigid3, types, image I/O, geo, small utilities).

Importing any vloc package imports this first, so the thread and allocator settings apply before
numpy / torch / OpenCV start their pools (see core.threads, core.malloc).
"""
from core import malloc as _malloc
from core import threads as _threads

_threads.configure()  # before numpy / torch load (see core.threads)
_malloc.keep_freed_memory()  # no page faults for per-frame buffers (see core.malloc)

__version__ = "0.1.0"
