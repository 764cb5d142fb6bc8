"""pass-agent: gives a set-top box's player what it needs to call Adobe Pass protected APIs.

Portable: this file must import under MicroPython (no typing, no dataclasses).
"""

__version__ = "0.1.0"
USER_AGENT = "pass-agent/" + __version__
