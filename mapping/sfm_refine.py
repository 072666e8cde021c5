"""Passes after an unposed mapper: retriangulation of pairs the model under-uses (drift left their
matches apart), track completion and merging across the whole view graph, then global bundle
adjustment with outlier filtering, repeated. This is what closes a loop the mapper registered
with a seam: the loop-closing pairs' matches join the tracks and the adjustment spreads the seam.
"""
from __future__ import annotations

from pathlib import Path

import pycolmap

from core.types import VlocError


def refine_model(rec: pycolmap.Reconstruction, db_path: Path, opts: pycolmap.IncrementalPipelineOptions,
                 passes: int, merge_max_reproj_px: float) -> pycolmap.Reconstruction:
    """``passes`` rounds of retriangulate -> complete and merge tracks -> iterative global bundle
    adjustment (points filtered by ``opts.mapper``'s reprojection / angle limits) on ``rec``, a
    model of the database at ``db_path`` (same image ids). Returns the refined model (a copy).

    ``merge_max_reproj_px``: how far (pixels) two tracks of the same matches may reproject apart
    and still be merged; wider than the mapper's own (4 px) so a drifted seam can join.
    """
    if passes <= 0:
        return rec
    if rec.num_reg_images() < 2:
        raise VlocError("SfM refinement needs a model with at least 2 registered images")
    db = pycolmap.Database.open(str(db_path))
    try:
        cache = pycolmap.DatabaseCache.create(db, pycolmap.DatabaseCacheOptions(min_num_matches=opts.min_num_matches))
    finally:
        db.close()
    model = pycolmap.Reconstruction(rec)
    mapper = pycolmap.IncrementalMapper(cache)
    mapper.begin_reconstruction(model)
    tri = opts.get_triangulation()
    tri.merge_max_reproj_error = max(tri.merge_max_reproj_error, merge_max_reproj_px)
    tri.complete_max_reproj_error = max(tri.complete_max_reproj_error, merge_max_reproj_px)
    mopts = opts.get_mapper()
    ba = opts.get_global_bundle_adjustment()
    for _ in range(passes):
        mapper.retriangulate(tri)
        mapper.complete_and_merge_tracks(tri)
        mapper.iterative_global_refinement(opts.ba_global_max_refinements, opts.ba_global_max_refinement_change,
                                           mopts, ba, tri, normalize_reconstruction=False)
        mapper.filter_points(mopts)
    mapper.end_reconstruction(discard=False)
    return model
