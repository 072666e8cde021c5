"""vloc stage: api."""
