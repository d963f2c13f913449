"""Image URLs -> images, before a model is leased: the one place where every surface's
http(s) image URLs (ImageUrl parts, from the pure translators) are fetched or refused.

The fetching itself (aiohttp, the time and size limits, the address policy) is
daemon/http/image_fetch.py, handed to the prediction service as an `ImageFetcher`: this
layer does not speak HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from daemon.config import Settings
from daemon.errors import InvalidRequest
from daemon.prediction.types import ContentPart, ImagePart, ImageUrl, Prediction

# Per request: each URL may take the whole time limit and size limit.
MAX_IMAGE_URLS = 16


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int
    timeout: float  # seconds for one URL, redirects and the wait for a fetch slot included
    allow_private: bool  # loopback, private and link-local destinations


class ImageFetcher(Protocol):
    async def fetch(self, url: str, limits: FetchLimits, *, param: str) -> ImagePart: ...


def limits_of(settings: Settings) -> FetchLimits:
    # An image over max_image_bytes is refused anyway: stop reading there.
    return FetchLimits(
        max_bytes=min(settings.image_urls_max_bytes, settings.max_image_bytes),
        timeout=settings.image_urls_timeout,
        allow_private=settings.image_urls_allow_private,
    )


def refused(part: ImageUrl) -> InvalidRequest:
    return InvalidRequest(
        f"'{part.param}': this server does not fetch image URLs (the image_urls setting is "
        "off; `lms server config set image_urls true` turns it on); send the image itself "
        "as base64 (a data URL: data:image/png;base64,...)",
        param=part.param,
        code="image_url_not_supported",
    )


async def resolve_image_urls(
    prediction: Prediction, settings: Settings, fetcher: ImageFetcher | None
) -> Prediction:
    """The prediction with each ImageUrl replaced by the image fetched from it; a 400
    when the `image_urls` setting is off. Unchanged when it names no URL."""
    urls = [part for message in prediction.messages for part in message.image_urls]
    if not urls:
        return prediction
    if not settings.image_urls:
        raise refused(urls[0])
    if fetcher is None:  # a core built without the HTTP layer (some tests)
        raise InvalidRequest("this daemon cannot fetch image URLs", param=urls[0].param)
    if len(urls) > MAX_IMAGE_URLS:
        raise InvalidRequest(
            f"{len(urls)} image URLs in one request; at most {MAX_IMAGE_URLS} are fetched",
            param=urls[MAX_IMAGE_URLS].param,
            code="too_many_image_urls",
        )
    limits = limits_of(settings)
    fetched: dict[str, ImagePart] = {}
    for part in urls:  # one at a time: a request holds at most one fetch slot
        if part.url not in fetched:
            fetched[part.url] = await fetcher.fetch(part.url, limits, param=part.param)

    def swap(content: tuple[ContentPart, ...]) -> tuple[ContentPart, ...]:
        return tuple(fetched[p.url] if isinstance(p, ImageUrl) else p for p in content)

    messages = tuple(
        replace(m, content=swap(m.content)) if m.image_urls else m for m in prediction.messages
    )
    return replace(prediction, messages=messages)
