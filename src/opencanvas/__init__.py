"""OpenCanvas: text-to-image diffusion from openly licensed images, with provenance.

Stages (each a library function plus a CLI verb) live in their own modules;
see docs/architecture.md for the map.
"""

__version__ = "0.1.0"
