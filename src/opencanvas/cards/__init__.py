"""cards stage."""
