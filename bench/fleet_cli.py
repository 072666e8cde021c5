"""`vloc robots fleet`: simulated delivery robots through the service, measured (bench.fleet).
Registered under `vloc robots` by the `vloc` shell."""
from __future__ import annotations

import typer


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
    from core.cli_util import user_errors

    @user_errors
    def run() -> None:
        import json
        from pathlib import Path

        from bench.fleet import DEFAULT_ROOT, FleetConfig, OdomNoise, print_fleet, run_fleet, run_local_fleet
        from core.progress import Reporter
        from core.types import VlocError

        cfg = FleetConfig(robots=robots, mode=mode, hz=hz, seconds=seconds, seed=seed, stride=stride,
                          odom=OdomNoise(trans_frac=odom_trans, rot_frac=odom_rot))
        cfg.check()
        if url:
            if not map_id:
                raise VlocError("--url needs --map-id (and --api-key unless the service is open)")
            from bench.serve_config import ServeBenchConfig
            from bench.serve_workload import prepare_7scenes
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
