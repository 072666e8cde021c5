"""vloc stage: robots."""
import core  # noqa: F401  (thread settings before numpy / torch load: core.threads)
