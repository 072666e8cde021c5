"""vloc stage: localize a camera frame in a map bundle."""
import core  # noqa: F401  (thread settings before numpy / torch load: core.threads)
from localize.config import LocalizerConfig
from localize.localizer import Localizer
from localize.result import LocalizationResult, PosePrior

__all__ = ["Localizer", "LocalizerConfig", "LocalizationResult", "PosePrior"]
