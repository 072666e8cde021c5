"""vloc stage: api."""
import vloc  # noqa: F401  (thread settings before numpy / torch load: vloc.threads)
