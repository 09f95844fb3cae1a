"""Provenance that reads the workspace's records: verify marked images against runs, takedowns, trace.

Sits above `sample` (it reads runs and their checkpoints) and below `cards`.
"""
