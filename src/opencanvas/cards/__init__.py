"""Data card, model card and attribution list, generated from workspace records only.

The API is `opencanvas.cards.writer.write_cards`; it is not re-exported here because `opencanvas --help`
imports this package for its CLI, and the writer reads checkpoints (torch).
"""
