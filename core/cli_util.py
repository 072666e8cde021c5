"""Shared CLI plumbing: user errors become one clear message and exit code 2."""
from __future__ import annotations

import functools
import sys

import typer

from core.camera import CameraError
from core.types import VlocError

EXIT_USER_ERROR = 2


def user_errors(fn):
    """Decorator: VlocError / CameraError / missing files -> 'error: ...' on stderr, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (VlocError, CameraError, FileNotFoundError, NotADirectoryError) as e:
            print(f"error: {e}", file=sys.stderr)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper
