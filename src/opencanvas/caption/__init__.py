"""caption stage."""
