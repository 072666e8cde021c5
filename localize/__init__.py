"""vloc stage: localize."""
