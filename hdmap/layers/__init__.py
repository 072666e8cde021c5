"""HD-map layers derived from a map bundle, written under ``BUNDLE/layers/`` by :func:`build.build_layers`.

Layout (``manifest["layers"]`` lists every file with its frame / CRS and statistics)::

    layers/
      mesh.ply               triangle mesh: TSDF of RGB-D frames (open3d VoxelBlockGrid), or a Poisson
                             surface of the sparse model when no depth is given; map frame, metres
      points.ply             the map's coloured 3D points, map frame (binary PLY, float64 xyz)
      points.las             the same points, LAS 1.4 point format 7 (scaled int32 xyz, 16-bit RGB):
                             in the projected CRS (WKT VLR) when georeferenced, else the map frame
      ortho.tif              top-down RGBA orthophoto (GeoTIFF): projected CRS + geotransform when
                             georeferenced, else the map's level frame (x, y) with no CRS
      floors.json            floors found from height clusters (level frame elevations)
      occupancy_floorK.pgm   ROS map_server occupancy grid per floor (trinary) + its .yaml
      footprint.geojson      per-floor footprint polygons: WGS84 lon/lat (RFC 7946) when
                             georeferenced, else map-frame x, y (stated in the properties)

The *level frame* is the map frame rotated so that the map's up axis is +z
(``level_from_map``, a pure rotation). When the map's up axis is +z (robot maps,
georeferenced maps whose ENU up is the map's z) it is the identity, and the 2D
layers index directly with a vloc pose's (x, y).
"""
