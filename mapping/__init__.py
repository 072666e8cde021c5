"""vloc stage: mapping."""
