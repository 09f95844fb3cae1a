"""Open-provenance components: an autoencoder and a CLIP trained only on the catalog, and the
loaders every later stage uses for these or for pretrained ones (local directory or hub id).

Import from the modules (`opencanvas.components.loading`, `.autoencoder`, `.clip`): `opencanvas --help`
imports this package for its CLI and must not pay for torch, so nothing is re-exported here.
"""
