"""iontodrive: driver for constant-current iontophoresis stimulators.

Layers, each depending only on those before it: :mod:`iontodrive.protocol` (sans-I/O wire protocol),
the link, the device client, the ramp controller, dose sessions and records, and the command line.
"""

__version__ = "0.1.0"
