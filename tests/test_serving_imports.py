"""The localization and serving path loads only what it uses: a GPU machine carries no open3d,
rasterio, laspy, cyclonedds or pyproj (issue 14's prepared run), and a server starts faster."""
from __future__ import annotations

import subprocess
import sys

HEAVY = ("open3d", "rasterio", "laspy", "cyclonedds", "pyproj", "rosbags", "dask", "matplotlib")


def test_the_serving_path_imports_no_mapping_extras():
    code = ("import sys\n"
            "import vloc.cli, api.app, api.client, localize, localize.cli, bench.serve, bench.sevenscenes\n"
            "from localize import Localizer\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "", f"loaded: {out.stdout.strip()}"
