"""`vloc robots ...` commands: thin adapters that connect robots (ROS 2, ROS 1, bags, a simulated
fleet) to the localization core or the service. Each command lives beside the bridge it runs."""
from __future__ import annotations

import typer

app = typer.Typer(help="Robot bridges: ROS 2 (DDS), ROS 1, bag replay, fleet simulation.", no_args_is_help=True)


# --- fleet (robots/fleet.py) ---------------------------------------------------------------------
@app.command("fleet")
def fleet_cmd(
    robots: int = typer.Option(3, "--robots", help="simulated robots"),
    url: str = typer.Option(None, "--url", help="a running service (default: start one on 127.0.0.1 from --root)"),
    map_id: str = typer.Option(None, "--map-id", help="with --url: the map the robots localize in"),
    api_key: str = typer.Option(None, "--api-key", envvar="VLOC_API_KEY", help="with --url: a robot key"),
    root: str = typer.Option(None, "--root", help="7-Scenes-layout scene whose frames the robots replay "
                             "(default ../shared/datasets/7scenes-redkitchen)"),
    mode: str = typer.Option("stream", "--mode", help="rest | stream"),
    hz: float = typer.Option(1.0, "--hz", help="frames per second per robot"),
    seconds: float = typer.Option(10.0, "--seconds", help="how long the robots drive"),
    stride: int = typer.Option(1, "--stride", help="frames advanced per tick (1: every captured frame)"),
    odom_trans: float = typer.Option(0.05, "--odom-noise", help="odometry translation noise, fraction of the step"),
    odom_rot: float = typer.Option(0.05, "--odom-rot-noise", help="odometry rotation noise, fraction of the step"),
    workers: int = typer.Option(2, "--workers", help="server threads (local service only)"),
    workdir: str = typer.Option("bench-results/serve-cache", "--workdir", help="map cache (local service only)"),
    seed: int = typer.Option(0, "--seed"),
    json_out: bool = typer.Option(False, "--json", help="print the report as JSON instead of a table"),
) -> None:
    """N delivery robots replaying real frames with noisy odometry through the service: per-robot
    pose error vs pgt_sfm, latency and drops."""
    from vloc.cli_util import user_errors

    @user_errors
    def run() -> None:
        import json
        from pathlib import Path

        from robots.fleet import DEFAULT_ROOT, FleetConfig, OdomNoise, print_fleet, run_fleet, run_local_fleet
        from vloc.progress import Reporter
        from vloc.types import VlocError

        cfg = FleetConfig(robots=robots, mode=mode, hz=hz, seconds=seconds, seed=seed, stride=stride,
                          odom=OdomNoise(trans_frac=odom_trans, rot_frac=odom_rot))
        cfg.check()
        if url:
            if not map_id:
                raise VlocError("--url needs --map-id (and --api-key unless the service is open)")
            from api.bench_serve import ServeBenchConfig, prepare_7scenes
            frames_root = Path(root) if root else DEFAULT_ROOT
            if not frames_root.is_dir():
                raise VlocError(f"7-Scenes folder {frames_root} not found (pass --root)")
            _, frames, _ = prepare_7scenes(frames_root, Path(workdir), ServeBenchConfig(), Reporter(not json_out))
            res = run_fleet(url, api_key, map_id, frames, cfg)
        else:
            res = run_local_fleet(cfg, Path(root) if root else DEFAULT_ROOT, Path(workdir), workers,
                                  Reporter(not json_out))
        if json_out:
            print(json.dumps(res, indent=2, allow_nan=False))
        else:
            print_fleet(res)

    run()


@app.command("ros2")
def ros2(config: str = typer.Option(..., "--config", "-c", help="bridge config, YAML or JSON (robots/config.py "
                                                                 "BridgeConfig)"),
         log_level: str = typer.Option("info", help="debug, info, warning")) -> None:
    """ROS 2 live bridge over DDS: Image / CompressedImage + CameraInfo + /tf in, PoseWithCovarianceStamped
    and map->odom TF out. Runs until Ctrl-C / SIGTERM, then logs its counters."""
    from robots.ros2.bridge import run_from_config
    from vloc.cli_util import user_errors
    user_errors(run_from_config)(config, log_level)


# --- replay (robots/replay.py) -------------------------------------------------------------------
@app.command("replay")
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
    from vloc.cli_util import user_errors

    @user_errors
    def run() -> None:
        import json
        import logging
        from pathlib import Path

        from robots.replay import ReplayConfig, print_report, replay
        from robots.transforms import rigid_from_ros
        from vloc.types import VlocError

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
@app.command("ros1")
def ros1_cmd(config: str = typer.Option(..., "--config", "-c", help="bridge config, YAML or JSON (robots/config.py "
                                        "BridgeConfig; its dds section is ignored)"),
             log_level: str = typer.Option("info", "--log-level"),
             node_name: str = typer.Option("vloc_bridge", "--node-name", help="ROS 1 node name")) -> None:
    """ROS 1 live bridge (rospy; master from ROS_MASTER_URI): Image / CompressedImage + CameraInfo + /tf in,
    PoseWithCovarianceStamped and map->odom TF out. Runs until Ctrl-C / SIGTERM, then logs its counters."""
    from vloc.cli_util import user_errors

    @user_errors
    def run() -> None:
        from robots.ros1.bridge import run_from_config
        run_from_config(config, log_level, node_name)

    run()
