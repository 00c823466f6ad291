"""One module per pipeline stage: the logic behind each command."""
