"""Dense surface of the map: TSDF fusion of depth frames, or a Poisson surface of the sparse points.

TSDF: open3d's tensor ``VoxelBlockGrid`` on the CPU (the legacy ``ScalableTSDFVolume`` returns
empty meshes in open3d 0.20). Without depth, a screened Poisson surface of the model's points
(normals from open3d, oriented towards the cameras that see them), cropped where the Poisson
density is low (extrapolated surface) and far from any input point.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import open3d as o3d
import open3d.core as o3c

from core.progress import QUIET, Reporter
from core.types import VlocError
from hdmap.layers.depth import DepthFrame


@dataclass(frozen=True)
class TsdfConfig:
    """TSDF fusion of depth frames (metres)."""

    #: voxel edge length.
    voxel: float = 0.02
    #: truncation distance of the signed distance, in voxels.
    trunc_voxels: float = 4.0
    #: depth beyond this is ignored (Kinect-class sensors are noisy past ~4 m).
    depth_max: float = 4.0
    #: a vertex needs more than this accumulated weight (~ number of observing frames).
    weight_threshold: float = 1.5
    #: voxel blocks (8^3 voxels each) reserved in the hash map; grown automatically.
    block_count: int = 40000


@dataclass(frozen=True)
class PoissonConfig:
    """Poisson surface of the sparse model when no depth is given."""

    #: octree depth of the Poisson solve (8: ~1/256 of the scene extent).
    depth: int = 8
    #: neighbours for normal estimation.
    normal_knn: int = 20
    #: drop vertices whose Poisson density is below this quantile (extrapolated surface).
    density_quantile: float = 0.1
    #: drop vertices farther than this from every input point, in multiples of the median point spacing.
    max_distance_spacings: float = 4.0


def _o3d_intrinsics(frame: DepthFrame) -> o3c.Tensor:
    """(3, 3) K in open3d's pixel convention (integer pixel centres: COLMAP minus 0.5)."""
    K = frame.camera.K().copy()
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    return o3c.Tensor(K, o3c.float64)


def tsdf_mesh(frames: Iterable[DepthFrame], cfg: TsdfConfig = TsdfConfig(),
              reporter: Reporter = QUIET) -> o3d.geometry.TriangleMesh:
    """Fuse depth frames (poses ``world_from_cam`` in the map frame) into a mesh in the map frame.

    Vertex colours come from the frames' registered colour images when every frame has one.
    Raises VlocError when no surface could be extracted.
    """
    frames = list(frames)
    if not frames:
        raise VlocError("no depth frames to fuse")
    dev = o3c.Device("CPU:0")
    with_colour = all(f.colour_path is not None for f in frames)
    names = ("tsdf", "weight", "color") if with_colour else ("tsdf", "weight")
    vbg = o3d.t.geometry.VoxelBlockGrid(
        attr_names=names, attr_dtypes=(o3c.float32,) * len(names), attr_channels=(1, 1, 3)[:len(names)],
        voxel_size=float(cfg.voxel), block_resolution=8, block_count=int(cfg.block_count), device=dev)
    trunc = float(cfg.trunc_voxels)  # open3d takes the truncation as a multiple of the voxel size
    for f in reporter.track(frames, "depth fusion"):
        depth, colour = f.load()
        d = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(depth[:, :, None]))).to(dev)
        K = _o3d_intrinsics(f)
        cam_from_world = o3c.Tensor(f.world_from_cam.inverse().matrix4(), o3c.float64)
        blocks = vbg.compute_unique_block_coordinates(d, K, cam_from_world, 1.0, float(cfg.depth_max), trunc)
        if with_colour:
            c = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(colour.astype(np.float32) / 255))).to(dev)
            vbg.integrate(blocks, d, c, K, K, cam_from_world, 1.0, float(cfg.depth_max), trunc)
        else:
            vbg.integrate(blocks, d, K, cam_from_world, 1.0, float(cfg.depth_max), trunc)
    tmesh = vbg.extract_triangle_mesh(float(cfg.weight_threshold))
    if tmesh.vertex.positions.shape[0] == 0:
        raise VlocError(f"TSDF fusion of {len(frames)} depth frames gave an empty mesh: too few overlapping "
                        f"frames (lower --depth-stride) or wrong depth intrinsics / poses")
    mesh = tmesh.to_legacy()
    mesh.remove_unreferenced_vertices()
    mesh.compute_vertex_normals()
    return mesh


def orient_normals_to_cameras(points: np.ndarray, normals: np.ndarray, cameras: np.ndarray,
                              point_camera: np.ndarray) -> np.ndarray:
    """Flip (N, 3) normals to face the camera centre ``cameras[point_camera[i]]`` that observes point i."""
    to_cam = cameras[point_camera] - points
    flip = np.einsum("ij,ij->i", normals, to_cam) < 0
    out = normals.copy()
    out[flip] *= -1
    return out


def sparse_mesh(points: np.ndarray, colours: np.ndarray, cameras: np.ndarray, point_camera: np.ndarray,
                cfg: PoissonConfig = PoissonConfig()) -> o3d.geometry.TriangleMesh:
    """Poisson surface of the map's (N, 3) points (map frame) with (N, 3) uint8 RGB colours.

    cameras: (M, 3) camera centres; point_camera: (N,) index of a camera observing each point
    (orients the normals). Vertices with low density or far from every input point are removed.
    """
    if len(points) < 50:
        raise VlocError(f"the map has only {len(points)} 3D points: too few for a surface")
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, np.float64)))
    pcd.colors = o3d.utility.Vector3dVector(np.asarray(colours, np.float64) / 255.0)
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(cfg.normal_knn))
    pcd.normals = o3d.utility.Vector3dVector(
        orient_normals_to_cameras(np.asarray(pcd.points), np.asarray(pcd.normals), cameras, point_camera))
    mesh, density = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(pcd, depth=cfg.depth)
    density = np.asarray(density)
    spacing = float(np.median(np.asarray(pcd.compute_nearest_neighbor_distance())))
    dist = np.asarray(o3d.geometry.PointCloud(mesh.vertices).compute_point_cloud_distance(pcd))
    drop = (density < np.quantile(density, cfg.density_quantile)) | (dist > cfg.max_distance_spacings * spacing)
    mesh.remove_vertices_by_mask(drop)
    mesh.remove_unreferenced_vertices()
    if len(mesh.vertices) == 0:
        raise VlocError("the Poisson surface of the sparse model is empty after density cropping")
    mesh.compute_vertex_normals()
    return mesh
