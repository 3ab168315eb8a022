"""The web page (``fmnpatch ui``; ``pip install 'fmn-patch[ui]'``): make a patch, try it, attack it, inspect it and
share it, from a browser. Gradio Blocks beside the CLI, calling only the public API (``fmn_patch``'s names); every
long job shows the library's own progress and can be cancelled, and a cancelled or refused job writes nothing.

Safe by default: it binds 127.0.0.1 (another host, or a gradio.live link, needs ``public``/``share``), uploads are
size-capped and read with safetensors only, every file offered for download is written to the visitor's own
temporary folder under a sanitised name, a hosted page (``local_paths=False``) refuses local folder bases, and a
Hub token typed in the page lives in that request only.
"""

from .config import PageConfig
from .page import build_page, serve

__all__ = ["PageConfig", "build_page", "serve"]
