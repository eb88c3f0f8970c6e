"""What every session shares: models loaded once (``services``), fair scheduling between sessions, threads."""
