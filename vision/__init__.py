"""vloc vision: local-feature backends, descriptor matching and retrieval, shared by map building and localization."""
import core  # noqa: F401  (thread settings before numpy / torch load: core.threads)
