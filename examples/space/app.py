"""fmn-patch's web page as a Hugging Face Space would run it: the bundled toy model, Hub bases and patches, no
local folders (``local_paths=False``), small uploads, on the address and port the Space gives.

Spaces run ``python app.py`` and route their public URL to port 7860 of the container: binding every address
(0.0.0.0) is what makes the page reachable there, hence ``public=True``. Locally: ``python examples/space/app.py``
(it then serves every machine that reaches this one; prefer ``fmnpatch ui`` on a workstation).
"""

import os

from fmn_patch.ui import PageConfig, serve

CONFIG = PageConfig(
    host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
    port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    public=True,  # a Space is public by design: that is its point
    local_paths=False,  # visitors name toy or Hub bases, never this container's folders
    max_upload_mb=64,  # patches are KiB to a few MiB; a Space has little disk
)

if __name__ == "__main__":
    serve(CONFIG)
