"""`vloc robots ros2 | ros1 | replay`: thin adapters that connect robots (ROS 2, ROS 1, bags) to the
localization core or the service. The `vloc` shell (vloc/cli.py) registers them; the simulated
fleet (`vloc robots fleet`) is a measurement and lives in bench.fleet_cli."""
from __future__ import annotations

import typer


def ros2(config: str = typer.Option(..., "--config", "-c", help="bridge config, YAML or JSON (robots/config.py "
                                                                 "BridgeConfig)"),
         log_level: str = typer.Option("info", help="debug, info, warning")) -> None:
    """ROS 2 live bridge over DDS: Image / CompressedImage + CameraInfo + /tf in, PoseWithCovarianceStamped
    and map->odom TF out. Runs until Ctrl-C / SIGTERM, then logs its counters."""
    from core.cli_util import user_errors
    from robots.ros2.bridge import run_from_config
    user_errors(run_from_config)(config, log_level)


# --- replay (robots/replay.py) -------------------------------------------------------------------
def replay_cmd(
    in_bag: str = typer.Argument(..., help="ROS 1 .bag, or ROS 2 bag directory (sqlite3 / MCAP)"),
    bundle: str = typer.Option(..., "--map", help="map bundle directory"),
    out: str = typer.Option(..., "--out", help="output bag (.bag for ROS 1, a new directory for ROS 2)"),
    tum: str = typer.Option(None, "--tum", help="TUM trajectory file (default: next to --out, .tum)"),
    image_topic: str = typer.Option(None, "--image-topic", help="default: the bag's only image topic"),
    camera_info_topic: str = typer.Option(None, "--camera-info-topic", help="default: the bag's only CameraInfo topic"),
    camera: str = typer.Option(None, "--camera", help="intrinsics 'MODEL W H PARAMS' (overrides CameraInfo)"),
    rate: float = typer.Option(0.0, "--rate", help="localize at most this many frames per second (0: all)"),
    out_format: str = typer.Option(None, "--out-format", help="rosbag1 | sqlite3 | mcap (default: like the input)"),
    no_copy: bool = typer.Option(False, "--no-copy", help="do not copy the input messages into the output"),
    base_from_camera: str = typer.Option(None, "--base-from-camera",
                                         help="extrinsic 'x y z qx qy qz qw' of the camera optical frame in "
                                              "base_link (default: /tf_static in the bag)"),
    gt_topic: str = typer.Option(None, "--gt-topic", help="ground-truth PoseStamped topic (pose in map)"),
    gt: str = typer.Option(None, "--gt", help="ground-truth file: TUM (world_from_cam) or pgt (cam_from_world)"),
    gt_format: str = typer.Option(None, "--gt-format", help="tum | pgt (default: from the file)"),
    gt_frame: str = typer.Option("camera", "--gt-frame", help="the truth is the pose of the 'camera' or the 'base'"),
    json_out: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Localize every image frame of a bag (or at --rate) and write poses + TF to a new bag and a
    TUM trajectory; with ground truth, print the accuracy."""
    from core.cli_util import user_errors

    @user_errors
    def run() -> None:
        import json
        import logging
        from pathlib import Path

        from core.types import VlocError
        from robots.replay import ReplayConfig, print_report, replay
        from robots.transforms import rigid_from_ros

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        extrinsic = None
        if base_from_camera:
            try:
                v = [float(x) for x in base_from_camera.replace(",", " ").split()]
                if len(v) != 7:
                    raise ValueError(f"{len(v)} numbers")
                extrinsic = rigid_from_ros(v[:3], v[3:])
            except ValueError as e:
                raise VlocError(f"--base-from-camera must be 'x y z qx qy qz qw': {e}") from None
        cfg = ReplayConfig(image_topic=image_topic, camera_info_topic=camera_info_topic, camera=camera,
                           rate_hz=rate, out_format=out_format, copy_input=not no_copy, base_from_camera=extrinsic,
                           gt_topic=gt_topic, gt_file=Path(gt) if gt else None, gt_format=gt_format,
                           gt_frame=gt_frame)
        rep = replay(Path(in_bag), Path(bundle), Path(out), cfg, Path(tum) if tum else None)
        if json_out:
            print(json.dumps(rep.to_dict(), indent=2, allow_nan=False))
        else:
            print_report(rep)

    run()


# --- ros1 (robots/ros1/bridge.py) ----------------------------------------------------------------
def ros1_cmd(config: str = typer.Option(..., "--config", "-c", help="bridge config, YAML or JSON (robots/config.py "
                                        "BridgeConfig; its dds section is ignored)"),
             log_level: str = typer.Option("info", "--log-level"),
             node_name: str = typer.Option("vloc_bridge", "--node-name", help="ROS 1 node name")) -> None:
    """ROS 1 live bridge (rospy; master from ROS_MASTER_URI): Image / CompressedImage + CameraInfo + /tf in,
    PoseWithCovarianceStamped and map->odom TF out. Runs until Ctrl-C / SIGTERM, then logs its counters."""
    from core.cli_util import user_errors

    @user_errors
    def run() -> None:
        from robots.ros1.bridge import run_from_config
        run_from_config(config, log_level, node_name)

    run()
