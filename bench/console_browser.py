"""Headless Debian Chromium driven by selenium, for the console's browser tests and benchmark.

``chromium_missing()`` says why no browser can run here (None when one can); ``start_chromium``
starts one (headless, ``--no-sandbox`` as root in a container, WebGL through SwiftShader when
there is no GPU); ``sign_in`` pastes a key into the console's form. Screenshots are PNG bytes;
``pixel_stats`` summarises one for "did anything draw" checks.
"""
from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

import numpy as np

#: where Debian's ``chromium`` and ``chromium-driver`` packages put them (``make install``)
CHROMIUM = "chromium"
CHROMEDRIVER = "chromedriver"
INSTALL_HINT = "apt-get install -y chromium chromium-driver (make install does it)"


def chromium_missing() -> str | None:
    """Why a headless Chromium cannot be driven here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for exe in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(exe) is None:
            return f"{exe} is not installed: {INSTALL_HINT}"
    return None


def start_chromium(width: int = 1280, height: int = 900, extra_args: tuple[str, ...] = ()):
    """A selenium Chrome driver on Debian's Chromium, headless, page-load timeout 60 s."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which(CHROMIUM)
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}",
              "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--use-gl=angle",
              "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
              "--no-proxy-server", "--disable-extensions", *extra_args):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    return driver


def wait_for(driver, js: str, timeout: float = 60.0, interval: float = 0.05):
    """Poll ``return <js>`` in the page until it is truthy; its value (TimeoutError after ``timeout``)."""
    t0 = time.monotonic()
    while True:
        value = driver.execute_script(f"return {js}")
        if value:
            return value
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"waited {timeout:.0f} s for: {js}")
        time.sleep(interval)


def sign_in(driver, base_url: str, key: str, fragment: str = "") -> None:
    """Open the console in a fresh tab state (no key kept) and sign in with ``key``. The kept key is
    cleared on another page of the origin (a console page could be signing in with it meanwhile)."""
    driver.get(f"{base_url}/healthz")
    driver.execute_script("sessionStorage.clear()")
    driver.get(f"{base_url}/console/{fragment}")
    wait_for(driver, "!document.getElementById('signin').hidden")
    box = driver.find_element("id", "key-input")
    box.clear()
    box.send_keys(key)
    driver.find_element("id", "signin-button").click()


def png_array(png: bytes) -> np.ndarray:
    """(H, W, 3) uint8 of a PNG screenshot."""
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def pixel_stats(png: bytes, inset: int = 0) -> dict:
    """Mean / std of the grey levels, distinct colours, and the share of pixels unlike the most
    common colour (the background); ``inset`` pixels of each edge left out (an element's border)."""
    a = png_array(png)
    if inset:
        a = a[inset:-inset, inset:-inset]
    flat = a.reshape(-1, 3)
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    background = colours[counts.argmax()]
    differ = np.abs(flat.astype(int) - background).max(1) > 24
    grey = a.mean(2)
    return {"mean": float(grey.mean()), "std": float(grey.std()), "colours": int(len(colours)),
            "non_background_pct": float(100 * differ.mean())}


def save(png: bytes, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path
