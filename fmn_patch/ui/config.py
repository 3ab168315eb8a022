"""What the page serves, where, and what it accepts: a typed config that ``fmnpatch ui`` maps its flags onto."""

from __future__ import annotations

from dataclasses import dataclass

from .. import FmnPatchError

#: Hosts that only this machine reaches: served without --public.
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_PORT = 65535


@dataclass(frozen=True)
class PageConfig:
    """Where the page listens and what it takes from visitors."""

    host: str = "127.0.0.1"  # the address it binds; another than loopback needs public=True
    port: int | None = None  # None: Gradio's default (7860, or the next free port)
    public: bool = False  # the visitor asked for a host other machines reach
    share: bool = False  # a public gradio.live link through Gradio's tunnel
    local_paths: bool = True  # False (a hosted Space): refuse local folder bases and preset files
    max_upload_mb: int = 256  # an upload larger than this is refused before it is read
    device: str = "cpu"  # where bases load: cpu, cuda, mps

    def __post_init__(self) -> None:
        if not self.host.strip():
            raise FmnPatchError("--host is empty; leave it out for 127.0.0.1, or give an address to bind")
        if self.host not in LOOPBACK and not self.public:
            raise FmnPatchError(
                f"--host {self.host} serves the page to every machine that reaches this one; add --public to mean "
                "it, or leave --host out for 127.0.0.1"
            )
        if self.port is not None and not (isinstance(self.port, int) and 1 <= self.port <= MAX_PORT):
            raise FmnPatchError(f"--port {self.port} is not a port; give one from 1 to {MAX_PORT}, e.g. 7860")
        if not (isinstance(self.max_upload_mb, int) and 1 <= self.max_upload_mb <= 100_000):
            raise FmnPatchError(
                f"--max-upload-mb {self.max_upload_mb} is out of range; give a size from 1 to 100000, e.g. 256"
            )

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024
