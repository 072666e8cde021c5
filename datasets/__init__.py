"""vloc stage: datasets."""
