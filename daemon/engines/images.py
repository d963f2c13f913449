"""Images as the engines take them: PNG, JPEG, WebP and GIF (its first frame) decoded with
Pillow into 8-bit RGB pixels, and named by a hash of their bytes (the prompt cache knows
an image again by it). Used by the daemon to check an image before it leases a model, and
by a worker to hand the pixels to the model's projector.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from daemon.errors import InvalidRequest

# Pillow's format names -> the MIME types we take.
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
MIME_TYPES = frozenset(FORMATS.values()) | {"image/jpg"}
# Far beyond what any projector takes (they resize to a few megapixels at most); a bound on
# the memory one decoded image may take (3 bytes a pixel): a "decompression bomb" stops here.
MAX_PIXELS = 50_000_000


@dataclass(frozen=True)
class DecodedImage:
    width: int
    height: int
    rgb: bytes  # width * height * 3 bytes, rows top to bottom


def image_id(data: bytes) -> str:
    """The image's identity for the prompt cache: a hash of its encoded bytes."""
    return hashlib.sha256(data).hexdigest()


def decode(data: bytes, *, param: str = "image") -> DecodedImage:
    """The image's pixels; a 400 (InvalidRequest) that says why when it is not an image we
    can read (corrupt, another format, too many pixels)."""
    from PIL import Image, UnidentifiedImageError

    def bad(why: str) -> InvalidRequest:
        return InvalidRequest(
            f"'{param}' is not an image this server can read ({why}); send PNG, JPEG, WebP or GIF",
            param=param,
            code="invalid_image",
        )

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in FORMATS:
                raise bad(f"its format is {image.format or 'unknown'}")
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise InvalidRequest(
                    f"'{param}' has {width}x{height} = {width * height} pixels; "
                    f"at most {MAX_PIXELS} are taken",
                    param=param,
                    code="image_too_large",
                )
            image.seek(0)  # a GIF's (or animated WebP's) first frame
            rgb = image.convert("RGB")
    except InvalidRequest:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise bad("it is not a picture in a known format") from None
    except (OSError, ValueError, EOFError, SyntaxError) as exc:
        raise bad(f"it is damaged: {exc}") from None
    return DecodedImage(width, height, rgb.tobytes())
