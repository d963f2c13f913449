"""Images in request bodies -> ImagePart: the transports every surface shares (a data URL,
a base64 string with its media type). Pure: no I/O. An image URL on the web (http, https)
becomes an ImageUrl: the prediction service fetches it, or refuses it, for every surface
alike (daemon/prediction/image_urls.py). Whether the bytes are an image we can read, and
their size, the service checks too."""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import urlsplit

from daemon.errors import InvalidRequest
from daemon.prediction.types import ImagePart, ImageUrl

DATA_URL_EXAMPLE = "data:image/png;base64,..."
WEB_SCHEMES = ("http", "https")
MAX_URL_LENGTH = 8192


def image_from_url(url: Any, *, param: str) -> ImagePart | ImageUrl:
    """An image given as a URL: a `data:image/...;base64,...` URL, or an http(s) URL
    (fetched later, if the server allows it)."""
    if not isinstance(url, str):
        raise InvalidRequest(f"'{param}' must be a string URL", param=param, code="invalid_type")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in WEB_SCHEMES:
        return web_image(url, param=param)
    if scheme != "data":
        raise InvalidRequest(
            f"'{param}' must be a base64 data URL ({DATA_URL_EXAMPLE}) or an http(s) URL",
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


def web_image(url: Any, *, param: str) -> ImageUrl:
    """An http(s) image URL, checked for its shape only (whether it may be fetched, and
    where it leads, is decided when it is fetched)."""
    if not isinstance(url, str):
        raise InvalidRequest(f"'{param}' must be a string URL", param=param, code="invalid_type")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme.lower() not in WEB_SCHEMES
        or not parts.hostname
        or len(url) > MAX_URL_LENGTH
    ):
        raise InvalidRequest(
            f"'{param}' is not a valid http(s) URL", param=param, code="invalid_image_url"
        )
    if parts.username is not None or parts.password is not None:
        # Credentials in the URL would be sent on, to wherever a redirect leads.
        raise InvalidRequest(
            f"'{param}': an image URL may not hold a user name or password",
            param=param,
            code="invalid_image_url",
        )
    return ImageUrl(url, param)


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
