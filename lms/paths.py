"""Where the daemon keeps its files; shared by the daemon and the CLI so both agree.

Each folder comes from platformdirs and can be overridden: `LMS_HOME` puts all of them
under one folder (config/, state/, log/, run/, data/), and `LMS_CONFIG_DIR`,
`LMS_STATE_DIR`, `LMS_LOG_DIR`, `LMS_RUNTIME_DIR`, `LMS_DATA_DIR` override one each.
"""

import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

APP_NAME = "lmsd"
SOCKET_NAME = "lmsd.sock"
LOCK_NAME = "lmsd.lock"
CONFIG_NAME = "config.yaml"
SERVER_STATE_NAME = "http-server.json"


@dataclass(frozen=True)
class Paths:
    config_dir: Path
    state_dir: Path
    log_dir: Path
    runtime_dir: Path
    data_dir: Path

    @property
    def socket(self) -> Path:
        return self.runtime_dir / SOCKET_NAME

    @property
    def lock_file(self) -> Path:
        return self.runtime_dir / LOCK_NAME

    @property
    def config_file(self) -> Path:
        return self.config_dir / CONFIG_NAME

    @property
    def server_state_file(self) -> Path:
        """Remembers the last HTTP port, as LM Studio's http-server-config.json does."""
        return self.state_dir / SERVER_STATE_NAME

    @property
    def log_file(self) -> Path:
        return self.log_dir / "lmsd.log"

    @property
    def startup_log_file(self) -> Path:
        """Where a detached daemon's stderr goes until its own logging is set up."""
        return self.log_dir / "lmsd-startup.log"


def _default_runtime_dir(env: Mapping[str, str]) -> Path:
    if sys.platform == "darwin":
        import platformdirs

        return Path(platformdirs.user_runtime_dir(APP_NAME))
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / APP_NAME
    # Without a login session (root in a container, cron) there may be no /run/user/<uid>.
    session_dir = Path("/run/user") / str(os.getuid())
    if session_dir.is_dir():
        return session_dir / APP_NAME
    return Path(tempfile.gettempdir()) / f"{APP_NAME}-{os.getuid()}"


def resolve_paths(env: Mapping[str, str] | None = None) -> Paths:
    env = os.environ if env is None else env
    home = env.get("LMS_HOME")

    def pick(var: str, under_home: str, default: Callable[[], Path]) -> Path:
        if env.get(var):
            return Path(env[var]).expanduser()
        if home:
            return Path(home).expanduser() / under_home
        return default()

    import platformdirs

    return Paths(
        config_dir=pick(
            "LMS_CONFIG_DIR", "config", lambda: Path(platformdirs.user_config_dir(APP_NAME))
        ),
        state_dir=pick(
            "LMS_STATE_DIR", "state", lambda: Path(platformdirs.user_state_dir(APP_NAME))
        ),
        log_dir=pick("LMS_LOG_DIR", "log", lambda: Path(platformdirs.user_log_dir(APP_NAME))),
        runtime_dir=pick("LMS_RUNTIME_DIR", "run", lambda: _default_runtime_dir(env)),
        data_dir=pick("LMS_DATA_DIR", "data", lambda: Path(platformdirs.user_data_dir(APP_NAME))),
    )
