"""pyserial URL handlers of the simulator (``sim://``).

Registered by :func:`firmware_sim.register_url_handler`.
"""
