"""The events of a streamed load (`POST /api/v1/models/load` with `"stream": true`), as
`lms load` reads them for its progress bar (daemon/http/load_stream.py sends them)."""

from typing import Literal, NotRequired, TypedDict

from lms.api.lifecycle import LoadReply

LoadEventType = Literal["model_load.start", "model_load.progress", "model_load.end"]


class LoadEvent(TypedDict):
    type: LoadEventType
    model_instance_id: str
    progress: NotRequired[float]  # model_load.progress: 0..1, never going back
    load_time_seconds: NotRequired[float]  # model_load.end
    result: NotRequired[LoadReply]  # model_load.end: the reply of a load not streamed
