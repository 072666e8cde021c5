"""vloc benchmarks: every `vloc bench ...` command and the report / table / speed-probe helpers they share."""
import core  # noqa: F401  (thread settings before numpy / torch load: core.threads)
