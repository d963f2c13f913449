"""Images in request bodies -> ImagePart: the transports every surface shares (a data URL,
a base64 string with its media type). Pure: no I/O. Image URLs on the web (http, https)
are refused: this server does not fetch them. Whether the bytes are an image we can read,
and their size, the prediction service checks for every surface alike."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from daemon.errors import InvalidRequest
from daemon.prediction.types import ImagePart

DATA_URL_EXAMPLE = "data:image/png;base64,..."


def image_from_url(url: Any, *, param: str) -> ImagePart:
    """An image given as a URL: only `data:image/...;base64,...` URLs are taken."""
    if not isinstance(url, str):
        raise InvalidRequest(f"'{param}' must be a string URL", param=param, code="invalid_type")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("http", "https"):
        raise InvalidRequest(
            f"'{param}': this server does not fetch images from the web; send the image "
            f"itself as a base64 data URL ({DATA_URL_EXAMPLE})",
            param=param,
            code="image_url_not_supported",
        )
    if scheme != "data":
        raise InvalidRequest(
            f"'{param}' must be a base64 data URL ({DATA_URL_EXAMPLE})",
            param=param,
            code="invalid_image",
        )
    header, sep, data = url[5:].partition(",")
    parts = [p.strip().lower() for p in header.split(";")]
    if not sep or "base64" not in parts[1:]:
        raise InvalidRequest(
            f"'{param}' must be a base64 data URL ({DATA_URL_EXAMPLE})",
            param=param,
            code="invalid_image",
        )
    return image_from_base64(data, parts[0] or None, param=param)


def image_from_base64(data: Any, media_type: Any, *, param: str) -> ImagePart:
    """An image given as base64 text and (where the surface has one) its media type."""
    if media_type is not None and (
        not isinstance(media_type, str) or not media_type.lower().startswith("image/")
    ):
        raise InvalidRequest(
            f"'{param}' has media type {media_type!r}; send an image (image/png, image/jpeg, "
            "image/webp, image/gif)",
            param=param,
            code="invalid_image",
        )
    if not isinstance(data, str):
        raise InvalidRequest(
            f"'{param}' must hold the image as base64 text", param=param, code="invalid_type"
        )
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(
            f"'{param}' is not valid base64", param=param, code="invalid_image"
        ) from None
    if not raw:
        raise InvalidRequest(f"'{param}' is empty", param=param, code="invalid_image")
    return ImagePart(raw, (media_type or "image/*").lower())
