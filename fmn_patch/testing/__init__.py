"""Tiny random pipelines for tests, built from configs with no download: for the project's own suite and for
anyone who writes a model family and wants to test it offline.

- ``testing.tiny.build_sd(kind, folder)``: SD-1.x-, SD-2.x- and SDXL-like diffusers folders (``sd1``, ``sd2``,
  ``sdxl``), with the real layouts where patches care (conv or linear projections, two text encoders, several
  transformer blocks per attention);
- ``testing.tiny_mmdit.build_mmdit(kind, folder)``: SD3.5-like and Flux-like MMDiT folders (``sd3``, ``flux``);
- the tokenizer writers both use (``tiny.write_tokenizer``, ``tiny_mmdit.write_t5_tokenizer``).

Every code path that serves a real checkpoint serves these; ``load_base(folder)`` loads what they write.
"""

from .tiny import build_sd
from .tiny_mmdit import build_mmdit

__all__ = ["build_mmdit", "build_sd"]
