"""Start, watch and stop a local env server; preflight checks for Chromium and the MiniWoB++ pages.

Kept free of heavy imports (no Playwright, no BrowserGym) so training can call :func:`preflight` and
:func:`check_env_url` before it loads a model.
"""

from __future__ import annotations

import atexit
import glob
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

#: Environment variable naming the Chromium (or Chrome) binary to use instead of the search below.
CHROMIUM_ENV = "BROWSERRL_CHROMIUM"
_CHROMIUM_CANDIDATES = (
    "/usr/lib/chromium/chromium",  # Debian's real binary (skips the /usr/bin/chromium shell wrapper)
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
)


class EnvSetupError(RuntimeError):
    """Chromium or the MiniWoB++ pages are missing; the message names the fix in one line."""


class EnvServerError(RuntimeError):
    """The env server did not start, died, or does not answer."""


def find_chromium() -> str:
    """Path of a Chromium binary: $BROWSERRL_CHROMIUM, Debian's chromium, PATH, or Playwright's download."""
    override = os.environ.get(CHROMIUM_ENV)
    if override:
        if os.access(override, os.X_OK):
            return override
        raise EnvSetupError(f"{CHROMIUM_ENV}={override} is not an executable; fix it or unset it")
    for candidate in _CHROMIUM_CANDIDATES:
        path = candidate if os.path.isabs(candidate) else shutil.which(candidate)
        if path and os.access(path, os.X_OK):
            return path
    browsers = os.environ.get("PLAYWRIGHT_BROWSERS_PATH") or os.path.expanduser("~/.cache/ms-playwright")
    for path in sorted(
        glob.glob(os.path.join(browsers, "chromium-*", "chrome-linux", "chrome")), reverse=True
    ):
        if os.access(path, os.X_OK):
            return path
    raise EnvSetupError(
        f"Chromium not found: install it with `apt-get install chromium` (or set {CHROMIUM_ENV}=PATH)"
    )


def miniwob_base_url() -> str:
    """Base URL of the MiniWoB++ task pages: $MINIWOB_URL, else the ``miniwob`` package's html folder."""
    url = os.environ.get("MINIWOB_URL")
    if url:
        if url.startswith("file://") and not os.path.isfile(
            url[len("file://") :].rstrip("/") + "/click-test.html"
        ):
            raise EnvSetupError(
                f"MINIWOB_URL={url} holds no MiniWoB++ pages: unset it and `pip install miniwob`"
            )
        return url if url.endswith("/") else url + "/"
    spec = importlib.util.find_spec("miniwob")
    if spec is not None and spec.submodule_search_locations:
        pages = Path(next(iter(spec.submodule_search_locations))) / "html" / "miniwob"
        if (pages / "click-test.html").is_file():
            return pages.as_uri() + "/"
    raise EnvSetupError(
        "MiniWoB++ pages not found: install them with `pip install miniwob` (or set MINIWOB_URL)"
    )


def preflight() -> tuple[str, str]:
    """Check that Chromium and the MiniWoB++ pages exist; return (chromium path, MiniWoB base URL).

    Raises :class:`EnvSetupError` with one line naming the fix. Training calls this before loading a model.
    """
    return find_chromium(), miniwob_base_url()


def _http_url(url: str) -> str:
    url = url.rstrip("/")
    for ws, http in (("ws://", "http://"), ("wss://", "https://")):
        if url.startswith(ws):
            return http + url[len(ws) :]
    return url


def check_env_url(url: str, timeout: float = 10.0) -> None:
    """Raise :class:`EnvServerError` unless an env server answers ``GET {url}/health`` within ``timeout``."""
    health = _http_url(url) + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout) as response:
            if response.status != 200:
                raise EnvServerError(f"{health} answered HTTP {response.status}")
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise EnvServerError(f"no env server answers at {health}: {e}") from None


#: Starts of a local server on a freshly picked port before "address already in use" is final.
PORT_TRIES = 3


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _option_args(options: dict[str, Any]) -> list[str]:
    """``{"max_steps": 10, "screenshot": True}`` -> ``["--max-steps", "10", "--screenshot"]``."""
    args: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args += [flag] if value else []
        elif isinstance(value, (list, tuple, frozenset, set)):
            args += [flag, ",".join(sorted(str(v) for v in value))]
        elif value is not None:
            args += [flag, str(value)]
    return args


class LocalEnvServer:
    """An env server in a child process on 127.0.0.1, for the lifetime of a training run.

    The child runs in its own process group and watches this process: it shuts down (browsers included)
    when stopped, when this process exits (atexit), and when this process dies without cleanup.
    Extra keyword arguments become server flags (``max_steps=10`` -> ``--max-steps 10``).
    """

    def __init__(
        self,
        task: str = "click-test",
        max_sessions: int = 8,
        port: int | None = None,
        host: str = "127.0.0.1",
        idle_timeout_s: float | None = 900.0,
        start_timeout_s: float = 90.0,
        **env_options: Any,
    ) -> None:
        self.task, self.max_sessions, self.host = task, max_sessions, host
        self.idle_timeout_s, self.start_timeout_s = idle_timeout_s, start_timeout_s
        self.env_options = env_options
        self._fixed_port = port
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise EnvServerError("the env server is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _command(self, port: int) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "browserrl.env.server",
            "--task",
            self.task,
            "--host",
            self.host,
            "--port",
            str(port),
            "--max-sessions",
            str(self.max_sessions),
            "--parent-pid",
            str(os.getpid()),
        ]
        if self.idle_timeout_s:
            cmd += ["--idle-timeout", str(self.idle_timeout_s)]
        return cmd + _option_args(self.env_options)

    def log_tail(self, lines: int = 20) -> str:
        """Last lines of the server's stdout/stderr (for error messages)."""
        if self._log is None:
            return ""
        self._log.flush()
        with open(self._log.name, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:]).strip()

    def start(self) -> LocalEnvServer:
        """Start the server, wait until ``/health`` answers; raise :class:`EnvServerError` if it does not.

        A port is picked free, then bound by the server a moment later: another process (a second run's
        server) can take it in between. Then, unless the port was given, the server starts again on
        another one, up to ``PORT_TRIES`` times."""
        if self.is_alive():
            return self
        preflight()  # fail with the fix, before a subprocess hides it in a log
        attempt = 1
        while True:
            try:
                return self._start_once()
            except EnvServerError as exc:
                if self._fixed_port or "address already in use" not in str(exc) or attempt == PORT_TRIES:
                    raise
                attempt += 1

    def _start_once(self) -> LocalEnvServer:
        self.port = self._fixed_port or _free_port(self.host)
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - open for the server's lifetime
            "w+b", prefix="browserrl-env-", suffix=".log", delete=False
        )
        repo_root = str(Path(__file__).resolve().parents[2])
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")]))
        )
        self._proc = subprocess.Popen(
            self._command(self.port),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if not self.is_alive():
                code = self._proc.returncode
                tail = self.log_tail()
                self.stop()
                raise EnvServerError(f"env server exited with code {code} before answering /health:\n{tail}")
            try:
                check_env_url(self.url, timeout=1.0)
                return self
            except EnvServerError:
                if time.monotonic() > deadline:
                    tail = self.log_tail()
                    self.stop()
                    raise EnvServerError(
                        f"env server: no answer at {self.url}/health in {self.start_timeout_s:.0f}s:\n{tail}"
                    ) from None
                time.sleep(0.1)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the server's process group (it closes its browsers), SIGKILL it after ``grace_s``."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None:
            for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    proc.poll()  # reap it if it died on its own
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
            os.unlink(self._log.name)
            self._log = None

    def restart(self) -> LocalEnvServer:
        """Stop (if needed) and start again, on a new free port unless one was fixed."""
        self.stop()
        return self.start()

    def __enter__(self) -> LocalEnvServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
