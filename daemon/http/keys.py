"""Typed application keys: the app's state lives on the app, never in module globals."""

from aiohttp import web

from daemon.events import EventBus
from daemon.http.control import DaemonControl
from daemon.manager import ModelManager
from daemon.metrics import Metrics
from daemon.model_defaults import ModelDefaults
from daemon.model_store import ModelStore
from daemon.prediction.conversations import ConversationStore
from daemon.prediction.service import PredictionService
from daemon.remote.pool import UpstreamPool

CONTROL = web.AppKey("control", DaemonControl)
MODELS = web.AppKey("models", ModelStore)
MANAGER = web.AppKey("manager", ModelManager)
EVENTS = web.AppKey("events", EventBus)
METRICS = web.AppKey("metrics", Metrics)
PREDICTIONS = web.AppKey("predictions", PredictionService)
CONVERSATIONS = web.AppKey("conversations", ConversationStore)
MODEL_DEFAULTS = web.AppKey("model_defaults", ModelDefaults)
UPSTREAMS = web.AppKey("upstreams", UpstreamPool)
