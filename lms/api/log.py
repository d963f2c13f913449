"""Route and shapes of the diagnostic log stream behind `lms log stream`.

`GET /api/admin/log/stream?source=model|server` answers a chunked NDJSON stream. Its first
line is empty: it says the subscription is live (events published from then on will be
sent). Every other line is one event, `{"timestamp": <ms epoch>, "data": {...}}`, with
`data` in LM Studio's shapes below. The stream ends when the client goes away or the daemon
shuts down.
"""

from typing import Any, Literal, TypedDict

LOG_STREAM_PATH = "/api/admin/log/stream"

LogSource = Literal["model", "server"]
LOG_SOURCES: tuple[LogSource, ...] = ("model", "server")
DEFAULT_SOURCE: LogSource = "model"

PREDICTION_INPUT = "llm.prediction.input"
PREDICTION_OUTPUT = "llm.prediction.output"
SERVER_LOG = "server.log"


class PredictionInput(TypedDict):
    type: Literal["llm.prediction.input"]
    input: str
    modelPath: str
    modelIdentifier: str


class PredictionOutput(TypedDict):
    type: Literal["llm.prediction.output"]
    output: str
    stats: dict[str, Any] | None
    modelIdentifier: str


class ServerLog(TypedDict):
    type: Literal["server.log"]
    content: str
    level: Literal["debug", "info", "warn", "error"]


class LogEvent(TypedDict):
    timestamp: int
    data: dict[str, Any]
