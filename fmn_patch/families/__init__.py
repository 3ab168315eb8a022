"""Layer 2: everything that depends on a model family, behind one protocol (``Family`` and its roles ``Text``,
``Noise``, ``Images``, ``Adapters``, ``Identity``); detection and loading (``load_base``), stacking patches on a
base, kohya export, tiny pipelines for tests.

Families: ``unet`` (SD 1.x, 2.x, SDXL), ``sd3`` (SD 3 / 3.5), ``flux`` (FLUX.1). A new family is a new module
here plus one ``register_family`` line.
"""

from . import flux, sd3, unet  # register the families (the latest registered is asked first)
from .adapters import Adapters
from .base import Base, BaseInfo, as_base, load_base, parse_dtype
from .conditioning import Conditioning, Sink
from .export import export_kohya, to_kohya
from .family import Family
from .grads import frozen
from .identity import Identity
from .images import Images
from .noise import Noise
from .registry import (
    NamedBase,
    families,
    family_for_architecture,
    family_of,
    named_base,
    register_base,
    register_family,
    unregister_family,
    world_of,
)
from .stack import (
    BaseMismatchWarning,
    apply_patches,
    check_compatible,
    fuse_patches,
    remove_patches,
    save_pipeline,
)
from .text import Text

__all__ = [
    "Adapters",
    "Base",
    "BaseInfo",
    "BaseMismatchWarning",
    "Conditioning",
    "Family",
    "Identity",
    "Images",
    "NamedBase",
    "Noise",
    "Sink",
    "Text",
    "apply_patches",
    "as_base",
    "check_compatible",
    "export_kohya",
    "families",
    "family_for_architecture",
    "family_of",
    "flux",
    "frozen",
    "fuse_patches",
    "load_base",
    "named_base",
    "parse_dtype",
    "register_base",
    "register_family",
    "remove_patches",
    "save_pipeline",
    "sd3",
    "to_kohya",
    "unet",
    "unregister_family",
    "world_of",
]
