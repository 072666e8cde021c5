"""vloc stage: robots."""
