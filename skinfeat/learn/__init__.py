"""Stage two: heads, LightGBM, the one fit path, calibration, cv, tuning."""
# The ensemble registers itself (``models.register``): it resolves its members through the
# registry, so the registry's own module cannot import it.
from . import ensemble  # noqa: F401
