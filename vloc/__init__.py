"""vloc: the `vloc` command (CLI root that registers every stage's commands) and the demo."""
from core import __version__  # noqa: F401
