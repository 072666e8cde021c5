"""vloc HD maps: georeference (GPS / GNSS / GCP), aerial fusion, HD layers, and the map job that runs every stage."""
import core  # noqa: F401  (thread settings before numpy / torch load: core.threads)
