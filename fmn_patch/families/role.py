"""What every role object of a family shares: the family it belongs to, and through it the pipeline and the
family's other roles (the text role asks the adapters role for the device, the images role asks the denoising role
for the scheduler's length, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .family import Family


class Role:
    """One part of a family's answers about its loaded pipeline."""

    def __init__(self, family: Family) -> None:
        self.family = family

    @property
    def pipe(self) -> Any:
        """The diffusers pipeline the family wraps."""
        return self.family.pipe
