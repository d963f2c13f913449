"""Typed application keys: the app's state lives on the app, never in module globals."""

from aiohttp import web

from daemon.http.control import DaemonControl

CONTROL = web.AppKey("control", DaemonControl)
