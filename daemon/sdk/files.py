"""Files the SDKs upload (`files.uploadFileBase64`) for a later prediction to name: images
only, as LM Studio takes them. One store for the whole daemon (an SDK uploads on its
`files` connection and predicts on its `llm` one), bounded in count and bytes: the files
used longest ago go first. Its state is touched from the event loop only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections import OrderedDict
from typing import Any

from daemon.engines import images
from daemon.errors import InvalidRequest, PayloadTooLarge
from daemon.prediction.types import ImagePart

MAX_FILES = 64
MAX_TOTAL_BYTES = 256 * 1024 * 1024


class UploadedFiles:
    def __init__(
        self,
        max_file_bytes: int,
        max_files: int = MAX_FILES,
        max_total_bytes: int = MAX_TOTAL_BYTES,
    ) -> None:
        self._max_file = max_file_bytes
        self._max_files = max_files
        self._max_total = max_total_bytes
        self._files: OrderedDict[str, ImagePart] = OrderedDict()

    async def upload(self, name: str, content_base64: Any) -> dict[str, Any]:
        """The SDK's upload: the file's handle (identifier, fileType, sizeBytes), or a 400
        when it is not an image we can read, a 413 when it is too large."""
        if not isinstance(content_base64, str):
            raise InvalidRequest("'contentBase64' must be a string", param="contentBase64")
        try:
            data = base64.b64decode(content_base64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(
                "'contentBase64' is not valid base64", param="contentBase64"
            ) from None
        if len(data) > self._max_file:
            raise PayloadTooLarge(
                f"{name!r} is {len(data)} bytes; files of at most {self._max_file} bytes are "
                "taken (the max_image_bytes setting)",
                code="image_too_large",
            )
        await asyncio.to_thread(images.decode, data, param=name)  # images only
        identifier = f"file-{images.image_id(data)[:24]}"
        self._files[identifier] = ImagePart(data, "image/*")
        self._files.move_to_end(identifier)
        self._trim()
        return {"identifier": identifier, "fileType": "image", "sizeBytes": len(data)}

    def image(self, identifier: Any) -> ImagePart:
        """The uploaded image a chat's file part names."""
        part = self._files.get(identifier) if isinstance(identifier, str) else None
        if part is None:
            raise InvalidRequest(
                f"no uploaded file {identifier!r} (files are kept for a while after "
                "uploadFileBase64; upload it again)",
                param="history",
            )
        self._files.move_to_end(identifier)
        return part

    def _trim(self) -> None:
        total = sum(len(p.data) for p in self._files.values())
        while self._files and (len(self._files) > self._max_files or total > self._max_total):
            _, dropped = self._files.popitem(last=False)
            total -= len(dropped.data)
