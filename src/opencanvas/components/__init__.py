"""components stage."""
