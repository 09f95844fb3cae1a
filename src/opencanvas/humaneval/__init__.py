"""Pairwise human evaluation (the CommonCanvas paper's headline result): prepared image pairs, raters with
invite tokens, votes in SQLite (WAL, one transaction per vote, raw votes kept), and the figures a report
gives (win rates with Wilson intervals, Bradley-Terry strengths with bootstrap intervals, agreement)."""

from __future__ import annotations

from opencanvas.humaneval.store import QUESTIONS, Study, open_study, study_names

__all__ = ["QUESTIONS", "Study", "open_study", "study_names"]
