"""vloc bundle format: the map bundle's readers and writers. One
directory, written atomically, read by localize/, api/ and robots/.

Layout (format version 1)::

    BUNDLE/
      manifest.json     format, version, units, frame conventions, cameras, feature type,
                        statistics, checksums of the source data and of every file below
      model/            COLMAP binary model (cameras.bin, images.bin, points3D.bin, rigs.bin,
                        frames.bin); images keep only the 2D points that observe a 3D point
      features.h5       HDF5, flat arrays over all map observations, image by image, in the
                        order of each image's 2D points in model/ (their pixels live there):
                          descriptors (T, D) uint8 | float32 (gzip, + shuffle for float32; chunked)
                          point3D_ids (T,) int32 (ids in model/)
                          points3D_id (P,) int32, points3D_xyz (P, 3) float64: every model point,
                            sorted by id (a copy of model/ for loading without parsing it)
                          image_centres (N, 3) float64: camera centres in the world frame
                          image_offsets (N+1,) int64: image k owns rows offsets[k]:offsets[k+1]
                          image_names (N,) utf-8, in model image order
                          points3D_track_length (P,) int32, points3D_tri_angle_deg (P,) float32,
                            points3D_reproj_error_px (P,) float32, points3D_covariance (P, 6)
                            float32 (upper triangle xx xy xz yy yz zz, m^2, world frame): each
                            point's uncertainty (mapping.point_quality); optional, bundles
                            written before it lack them and the localizer derives them from model/
      retrieval.npz     VLAD index (see vision.retrieval)

Writes go to a hidden sibling temp directory that is renamed into place, so a
reader sees either the old bundle or the new one, never a half-written one.
"""
from bundleio.atomic import atomic_directory, update_bundle
from bundleio.feature_sets import FeatureSet, canonical_name, feature_sets, resolve_feature_set
from bundleio.features_h5 import (
    FeatureTable,
    read_features_h5,
    read_point_quality,
    write_compressed,
    write_features_h5,
)
from bundleio.manifest import (
                               CONVENTIONS,
                               FORMAT_NAME,
                               FORMAT_VERSION,
                               MANIFEST,
                               dir_size,
                               read_manifest,
                               record_pending_stage,
                               recording_stage,
                               sha256_file,
                               verify_files,
                               write_manifest,
)

__all__ = ["FeatureSet", "canonical_name", "feature_sets", "resolve_feature_set", "CONVENTIONS", "FORMAT_NAME", "FORMAT_VERSION", "MANIFEST", "FeatureTable", "atomic_directory",
           "dir_size", "read_features_h5", "read_manifest", "read_point_quality", "record_pending_stage", "recording_stage",
           "sha256_file", "update_bundle", "verify_files", "write_compressed", "write_features_h5",
           "write_manifest"]
