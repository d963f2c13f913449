"""Typed application keys: the app's state lives on the app, never in module globals."""

from aiohttp import web

from daemon.config import Settings
from daemon.http.control import DaemonControl
from daemon.manager import ModelManager
from daemon.model_store import ModelStore

CONTROL = web.AppKey("control", DaemonControl)
SETTINGS = web.AppKey("settings", Settings)
MODELS = web.AppKey("models", ModelStore)
MANAGER = web.AppKey("manager", ModelManager)
