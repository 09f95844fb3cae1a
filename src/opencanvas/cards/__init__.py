"""Data card, model card and attribution list, generated from workspace records only."""

from opencanvas.cards.writer import write_cards

__all__ = ["write_cards"]
