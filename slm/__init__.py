"""Pure ML core of slm. Never imports Django."""
