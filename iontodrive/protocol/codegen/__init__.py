"""Generate the C99 codec of the wire protocol from the Python definitions (issue 15).

``python -m iontodrive.protocol.codegen`` writes ``firmware/c/ionto_protocol.h``, ``ionto_protocol.c`` and
the host-side test shim ``firmware/c/host/ionto_host_shim.c``; ``--check`` exits 1 when the files in the
repository differ from what the definitions generate now. ``docs/firmware.md`` is the user's guide.

This sub-package is a build tool, not part of the sans-I/O protocol core: nothing in
:mod:`iontodrive.protocol` imports it. It reads the core (:mod:`.model`), renders C (:mod:`.emit_c`,
:mod:`.emit_shim`, :mod:`.emit_vectors`), builds and runs it (:mod:`.toolchain`) and binds the host build to
Python through ``ctypes`` (:mod:`.binding`) for the differential tests and the benchmark.
"""

from __future__ import annotations

from .generate import GENERATED_DIR, check, generate, render_all

__all__ = ["GENERATED_DIR", "check", "generate", "render_all"]
