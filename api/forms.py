"""Reading multipart bodies with limits, and clear 4xx for everything a client can get wrong."""
from __future__ import annotations

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from api.errors import ApiError


def require_content_type(request: Request, *allowed: str) -> str:
    """The request's media type when it is one of ``allowed``; ApiError 415 otherwise."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in allowed:
        raise ApiError(415, f"unsupported content type {media or 'none'!r}: send {' or '.join(allowed)}")
    return media


async def read_form(request: Request, fields: tuple[str, ...], max_files: int) -> FormData:
    """Parse a multipart body (files are spooled to disk by Starlette) that may only carry
    ``fields``; ApiError 400 when malformed, 422 for an unknown field."""
    try:
        form = await request.form(max_files=max_files, max_fields=len(fields))
    except HTTPException:
        raise  # 413 from the body limit, 400 from Starlette's parser
    except Exception as e:  # python-multipart raises assorted types on garbage
        raise ApiError(400, f"malformed multipart body: {e}") from None
    unknown = sorted(set(form.keys()) - set(fields))
    if unknown:
        await form.close()
        raise ApiError(422, f"unknown multipart field(s) {', '.join(repr(u[:40]) for u in unknown[:5])}: "
                            f"expected {', '.join(fields)}")
    return form


def file_field(form: FormData, name: str, what: str) -> UploadFile:
    value = form.get(name)
    if value is None:
        raise ApiError(422, f"missing multipart field {name!r} ({what})")
    if not isinstance(value, UploadFile):
        raise ApiError(422, f"multipart field {name!r} must be a file part (with a filename): {what}")
    return value


async def text_field(form: FormData, name: str, max_bytes: int, required: bool = True,
                     too_long: int = 413) -> bytes | None:
    """A field's bytes, whether sent as a plain field or as a file part; ``too_long`` (413 or 422)
    over ``max_bytes``."""
    value = form.get(name)
    if value is None:
        if required:
            raise ApiError(422, f"missing multipart field {name!r}")
        return None
    data = await value.read(max_bytes + 1) if isinstance(value, UploadFile) else value.encode("utf-8", "replace")
    if len(data) > max_bytes:
        raise ApiError(too_long, f"multipart field {name!r} is over the limit of {max_bytes} bytes")
    return data
