"""Peer methods re-implemented faithfully for side-by-side benches: UCE and SPEED, closed-form key/value edits, and
MACE (closed form, one LoRA per concept, closed-form fusion).

Each makes an fmn-patch ``Patch`` from a base, as ``fmn_patch.methods.edit_patch`` does, so the benches apply,
measure and remove it the same way. Bench scripts import it as ``peers`` (they put ``bench/`` on ``sys.path``)::

    from peers import uce_patch, speed_patch
    patch = uce_patch(load_base("toy"), ["circle"], "shape", ["square", "star"])
"""

from .mace import TOY, MaceConfig, References, mace_patch
from .speed import MULTI_CONCEPT, SpeedConfig, speed_delta, speed_patch, speed_projector
from .uce import ART_TEMPLATES, OBJECT_TEMPLATES, UceConfig, uce_map, uce_patch, uce_solve

__all__ = [
    "ART_TEMPLATES",
    "MULTI_CONCEPT",
    "OBJECT_TEMPLATES",
    "TOY",
    "MaceConfig",
    "References",
    "SpeedConfig",
    "UceConfig",
    "mace_patch",
    "speed_delta",
    "speed_patch",
    "speed_projector",
    "uce_map",
    "uce_patch",
    "uce_solve",
]
