"""Deprecated: moved to ``fmn_patch.testing.tiny`` (tiny pipelines are test fixtures, not part of the family
seam); this alias is removed in the next release."""

import warnings

from ..testing.tiny import *  # noqa: F403
from ..testing.tiny import __all__ as __all__

warnings.warn(
    "fmn_patch.families.tiny moved to fmn_patch.testing.tiny"
    "; import it from there (this alias goes next release)",
    DeprecationWarning,
    stacklevel=2,
)
