"""Installing lmsd as a service at boot: a systemd unit (user or system-wide) on Linux,
a launchd LaunchAgent on macOS, rendered from the templates in `service_templates/` with
the absolute path of `lmsd` in the environment `lms` runs from.

`LMS_SERVICE_ROOT` installs into a staging root instead (as DESTDIR does for packages):
files are written under it and no service manager is touched.
"""

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lms.paths import resolve_paths

UNIT_NAME = "lmsd.service"
PLIST_LABEL = "ai.lmsd.daemon"
SYSTEM_USER = "lmsd"


class ServiceError(Exception):
    pass


@dataclass(frozen=True)
class ServicePlan:
    manager: str  # "systemd" | "launchd"
    system: bool
    target: Path  # where the file goes (inside the staging root, if any)
    content: str
    staged: bool  # written under LMS_SERVICE_ROOT: touch no service manager


def lmsd_command() -> str:
    """The absolute path of `lmsd` next to this Python (the venv it is installed in)."""
    candidate = Path(sys.executable).parent / "lmsd"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("lmsd")
    if found:
        return str(Path(found).resolve())
    raise ServiceError(f"cannot find the lmsd program next to {sys.executable}; is lmsd installed?")


def _template(name: str) -> str:
    return resources.files("lms").joinpath("service_templates", name).read_text()


def _root() -> Path | None:
    root = os.environ.get("LMS_SERVICE_ROOT")
    return Path(root) if root else None


def _under_root(path: Path) -> Path:
    root = _root()
    return root / path.relative_to("/") if root is not None else path


def plan(*, system: bool, platform: str = sys.platform) -> ServicePlan:
    lmsd = lmsd_command()
    staged = _root() is not None
    if platform == "darwin":
        if system:
            raise ServiceError("--system is not supported on macOS; install the LaunchAgent")
        home = Path.home()
        content = (
            _template("ai.lmsd.daemon.plist")
            .replace("@LMSD@", lmsd)
            .replace("@LOG_DIR@", str(resolve_paths().log_dir))
        )
        target = home / "Library" / "LaunchAgents" / f"{PLIST_LABEL}.plist"
        return ServicePlan("launchd", False, _under_root(target), content, staged)
    if system:
        content = _template("lmsd-system.service").replace("@LMSD@", lmsd)
        target = Path("/etc/systemd/system") / UNIT_NAME
    else:
        content = _template("lmsd.service").replace("@LMSD@", lmsd)
        config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        target = config_home / "systemd" / "user" / UNIT_NAME
    return ServicePlan("systemd", system, _under_root(target), content, staged)


def installed_plan(platform: str = sys.platform) -> ServicePlan | None:
    """The user service, when its file is installed (not staged) on this machine."""
    if _root() is not None:
        return None
    try:
        candidate = plan(system=False, platform=platform)
    except ServiceError:
        return None
    return candidate if candidate.target.exists() else None


def _run(argv: Sequence[str]) -> None:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise ServiceError(f"{argv[0]} is not available on this machine") from None
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()
        raise ServiceError(f"`{' '.join(argv)}` failed: {reason[-1] if reason else 'no output'}")


def _systemctl(system: bool, *args: str) -> list[str]:
    return ["systemctl", *([] if system else ["--user"]), *args]


def install(service: ServicePlan, *, start: bool) -> None:
    if service.system and not service.staged:
        if os.geteuid() != 0:
            raise ServiceError("installing the system-wide service needs root (use sudo)")
        _ensure_system_user()
    service.target.parent.mkdir(parents=True, exist_ok=True)
    tmp = service.target.with_name(service.target.name + ".tmp")
    tmp.write_text(service.content)
    os.replace(tmp, service.target)
    if service.staged:
        return
    if service.manager == "systemd":
        _run(_systemctl(service.system, "daemon-reload"))
        _run(_systemctl(service.system, "enable", *(["--now"] if start else []), UNIT_NAME))
    else:
        if start:
            _run(["launchctl", "bootstrap", f"gui/{os.getuid()}", str(service.target)])


def uninstall(service: ServicePlan) -> bool:
    if not service.target.exists():
        return False
    if not service.staged:
        if service.manager == "systemd":
            _run(_systemctl(service.system, "disable", "--now", UNIT_NAME))
        else:
            subprocess.run(
                ["launchctl", "bootout", f"gui/{os.getuid()}/{PLIST_LABEL}"],
                capture_output=True,
                timeout=60,
            )
    service.target.unlink()
    if not service.staged and service.manager == "systemd":
        _run(_systemctl(service.system, "daemon-reload"))
    return True


def start_service(service: ServicePlan) -> None:
    if service.manager == "systemd":
        _run(_systemctl(service.system, "start", UNIT_NAME))
    else:
        _run(["launchctl", "kickstart", f"gui/{os.getuid()}/{PLIST_LABEL}"])


def stop_service(service: ServicePlan) -> None:
    if service.manager == "systemd":
        _run(_systemctl(service.system, "stop", UNIT_NAME))
    else:
        _run(["launchctl", "kill", "TERM", f"gui/{os.getuid()}/{PLIST_LABEL}"])


def _ensure_system_user() -> None:
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        _run(
            [
                "useradd",
                "--system",
                "--home-dir",
                "/var/lib/lmsd",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
                SYSTEM_USER,
            ]
        )
