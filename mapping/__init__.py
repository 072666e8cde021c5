"""vloc stage: mapping."""
import vloc  # noqa: F401  (thread settings before numpy / torch load: vloc.threads)
