"""The processes of scripts/run_docs.py: the environment a page's commands run in, and the
server that has imported actextract once and forks a process for each command.

``Server.start`` runs this file as ``python scripts/docs_server.py --serve SOCKET`` (as does
``run_docs.py --serve SOCKET``); a page's ``actextract`` and ``doctest-python`` are small
scripts that call ``client``. ``--plain`` pages get ``_plain_bin``'s commands instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


# -- the environment of a page's commands (and of the server) ---------------------------------
def environment(folder: Path, bin_dir: Path) -> dict[str, str]:
    """What the page's commands see: nothing of the caller's HOME or caches, and proxies that
    lead nowhere, so that a download fails at once rather than reaching out."""
    state = folder / ".doctest"
    env = {
        "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), SYSTEM_PATH]),
        "HOME": str(state / "home"),
        "TMPDIR": str(state / "tmp"),
        "XDG_CACHE_HOME": str(state / "cache"),
        "XDG_CONFIG_HOME": str(state / "config"),
        "MPLCONFIGDIR": str(state / "matplotlib"),
        "TORCH_HOME": str(state / "torch"),
        "TORCHINDUCTOR_CACHE_DIR": str(state / "inductor"),
        # One thread per process: the pages run background shards and loader workers, and
        # other jobs may share the cores; OpenMP threads that wait for each other there spin
        # (a 2-core machine with a second job trained the demo model 7 times slower on 2).
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "no_proxy": "",
        "HF_HUB_OFFLINE": "1",
    }
    if os.environ.get("PYTHONPATH"):  # a checkout run without installing (PYTHONPATH=.)
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    for key in ("HOME", "TMPDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    return env


def network_off() -> list[str]:
    """``unshare -rn`` where the kernel lets this user make a network namespace, else []."""
    if shutil.which("unshare") is None:
        return []
    try:
        ok = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return ["unshare", "-rn"] if ok.returncode == 0 else []


# -- the fork server ----------------------------------------------------------------------------
def _plain_bin(bin_dir: Path) -> None:
    exe = sys.executable
    entry = Path(exe).parent / "actextract"  # the installed command, where there is one
    run = f'"{entry}"' if entry.exists() else f'"{exe}" -m actextract'
    _write_exe(bin_dir / "actextract", f'#!/bin/sh\nexec {run} "$@"\n')
    _write_exe(bin_dir / "doctest-python", f'#!/bin/sh\nexec "{exe}" - < "$1"\n')


def _client_bin(bin_dir: Path, address: str) -> None:
    here = str(Path(__file__).parent)
    head = f"#!{sys.executable} -IBS\nimport sys\nsys.path.insert(0, {here!r})\n"
    call = "from docs_server import client\nclient({address!r}, {mode!r})\n"
    _write_exe(bin_dir / "actextract", head + call.format(address=address, mode="cli"))
    _write_exe(bin_dir / "doctest-python", head + call.format(address=address, mode="python"))


def _write_exe(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)


class Server:
    """A process that has imported actextract and forks one child per command; its own HOME,
    caches and socket are in ``folder`` (a page's commands bring their own environment)."""

    def __init__(self, proc: subprocess.Popen, address: str, spare: Path | None = None):
        self.proc, self.address, self.spare = proc, address, spare

    @classmethod
    def start(cls, folder: Path) -> Server:
        folder.mkdir(parents=True, exist_ok=True)
        address, spare = str(folder / "server.sock"), None
        if len(address.encode()) > 100:  # AF_UNIX paths are short; a deep tmp_path is not
            spare = Path(tempfile.mkdtemp(prefix="actextract-docs-"))
            address = str(spare / "s.sock")
        with open(folder / "server.log", "w") as log:
            proc = subprocess.Popen(
                [*network_off(), sys.executable, "-u", __file__, "--serve", address],
                cwd=folder,
                env=environment(folder, folder / "bin"),
                stdin=subprocess.PIPE,  # the server ends when this closes (the caller is gone)
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        ready = proc.stdout.readline()
        if ready.strip() != "ready":
            proc.kill()
            proc.wait()
            err = (folder / "server.log").read_text()
            raise RuntimeError(f"the doc-test server did not start: {ready}{err}")
        return cls(proc, address, spare)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdin:
            self.proc.stdin.close()
        if self.proc.stdout:
            self.proc.stdout.close()
        if self.spare is not None:
            shutil.rmtree(self.spare, ignore_errors=True)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(address: str) -> None:
    """Import actextract once, then fork a process for each client that connects."""
    from actextract.__main__ import main  # what every command would import

    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(address)
    srv.listen(16)
    print("ready", flush=True)
    # No thread here: a fork copies the locks other threads hold (a thread blocked reading
    # sys.stdin holds its buffer's lock, and a DataLoader worker, which closes sys.stdin,
    # would wait for it forever). The server ends when its stdin closes: the caller is gone.
    while True:
        ready, _, _ = select.select([srv, 0], [], [])
        if 0 in ready and not os.read(0, 1024):
            os._exit(0)
        if srv not in ready:
            continue
        conn, _ = srv.accept()
        pid = os.fork()
        if pid == 0:
            srv.close()
            _child(conn, main)  # never returns
        conn.close()
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass


def _child(conn: socket.socket, main) -> None:
    import atexit
    import runpy
    import traceback

    code = 1
    try:
        head, fds, _, _ = socket.recv_fds(conn, 8, 3)
        (size,) = struct.unpack("!Q", head)
        payload = b""
        while len(payload) < size:
            payload += conn.recv(size - len(payload))
        request = json.loads(payload)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.setsid()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        tempfile.tempdir = None  # TMPDIR is the page's now
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        threading.Thread(target=_watch_client, args=(conn,), daemon=True).start()
        sys.path[0] = request["cwd"]  # as python -m puts the working directory first
        try:
            if request["mode"] == "cli":
                sys.argv = ["actextract", *request["argv"]]
                main(args=request["argv"], prog_name="actextract")
                code = 0
            else:
                sys.path[0] = ""  # as `python - < file`
                sys.argv = ["-"]
                runpy.run_path(request["argv"][0], run_name="__main__")
                code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            if isinstance(stop.code, str):
                print(stop.code, file=sys.stderr)
        except KeyboardInterrupt:
            code = 130
        except BaseException:
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        try:
            conn.sendall(bytes([code & 0xFF]))
        finally:
            os._exit(code & 0xFF)


def _watch_client(conn: socket.socket) -> None:
    """A byte from the client is a signal it received (passed on); its end is the client's
    end (a SIGKILL), which this process follows."""
    while True:
        try:
            got = conn.recv(1)
        except OSError:
            got = b""
        if not got:
            os.killpg(0, signal.SIGKILL)
        os.kill(os.getpid(), got[0])


def client(address: str, mode: str) -> None:
    """The ``actextract`` (and ``doctest-python``) of a page: hand this process's arguments,
    folder, environment and stdin/stdout/stderr to the server, pass on the signals it gets,
    and exit with the command's status."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(address)
    request = {"mode": mode, "argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}
    payload = json.dumps(request).encode()
    socket.send_fds(conn, [struct.pack("!Q", len(payload))], [0, 1, 2])
    conn.sendall(payload)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda n, _frame: conn.send(bytes([n])))
    got = conn.recv(1)
    sys.exit(got[0] if got else 255)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--serve":
        sys.exit("usage: python scripts/docs_server.py --serve SOCKET")
    serve(sys.argv[2])
