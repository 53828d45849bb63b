"""Passwords in URLs and malformed URLs / credentials / kubeconfigs (agent/prom.py, agent/kube.py, fleetpilot run and
handover): every bad input is ONE line on stderr naming the flag or file, exit code 2, and no secret ever shows --
not when the password holds an unescaped ``/``, ``:`` or ``@``, not when the URL has no scheme, not in logs or the
audit. Every flag of ``fleetpilot run`` is checked before anything connects anywhere.

Reproductions of a reviewer's findings: ``http://user:s3cr/et@host`` echoed (and sent ``user:s3cr`` as a host);
``user:pw@host`` and ``--kube-host admin:pw@host`` echoed; port 99999, ``[::1``, non-ASCII user names and header
values, a kubeconfig of random bytes or ``/dev/zero`` gave "internal error" (exit 1); ``--recalibrate-every`` and
``--drift-margin`` were checked only after contacting Kubernetes.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fleetpilot.agent.kube import make_api_client
from fleetpilot.agent.prom import (
    PrometheusAccess,
    PrometheusSource,
    check_http_url,
    redact,
    split_userinfo,
)
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import load_goal
from testbed.prometheus import free_port, serve_in_thread

ROOT = Path(__file__).resolve().parent.parent
GOAL_PATH = ROOT / "examples" / "goals" / "single-model.yaml"


# ------------------------------------------------------------------------------------------------ redaction


@pytest.mark.parametrize(("text", "secret", "kept"), [
    ("Prometheus http://user:Sl4sh/Pw9@127.0.0.1:1: no answer", "Sl4sh/Pw9", "127.0.0.1:1"),
    ("GET https://u:a@b:c/d@prom.example:9090/api failed", "a@b:c/d", "prom.example:9090/api"),
    ("got 'user:NoScheme77@127.0.0.1:1'", "NoScheme77", "127.0.0.1:1"),
    ("--kube-host=admin:KubePw42@10.0.0.1:6443 refused", "KubePw42", "10.0.0.1:6443"),
    ('{"url": "http://ops:Js0n/Pw@[::1]:9090"}', "Js0n/Pw", "[::1]:9090"),
])
def test_redact_hides_all_of_the_userinfo(text: str, secret: str, kept: str) -> None:
    out = redact(text)
    assert secret not in out and secret.split("/")[0] not in out, out
    assert kept in out and "***@" in out


def test_redact_leaves_ordinary_text_alone() -> None:
    for text in ("mail alice@example.com about it", "rate(x[5m] @ 1700000000)", "http://prom:9090/api/v1/query",
                 "already http://***@host"):
        assert redact(text) == text


def test_split_userinfo_takes_everything_before_the_last_at() -> None:
    assert split_userinfo("http://u:p/q@r@h:1/x") == ("http://", "u:p/q@r", "h:1/x")
    assert split_userinfo("u:p@h:1") == ("", "u:p", "h:1")
    assert split_userinfo("https://h:1/x") == ("https://", None, "h:1/x")


@pytest.mark.parametrize(("url", "secret", "match"), [
    ("http://user:Sl4sh/Pw9@127.0.0.1:1/", "Sl4sh/Pw9", "percent-encode"),
    ("http://user:Qm4rk?Pw9@127.0.0.1:1/", "Qm4rk?Pw9", "percent-encode"),
    ("user:NoScheme77@127.0.0.1:1", "NoScheme77", "http:// or https://"),
    ("ftp://user:FtpPw123@127.0.0.1:1", "FtpPw123", "http:// or https://"),
    ("http://us\u20acr:EuroPw123@127.0.0.1:1", "EuroPw123", "user name"),
])
def test_from_url_refuses_what_it_cannot_split_safely(url: str, secret: str, match: str) -> None:
    with pytest.raises(UserError, match=match) as exc:
        PrometheusAccess.from_url(url)
    msg = str(exc.value)
    assert secret not in msg and secret[:5] not in msg and "--prometheus" in msg
    assert secret not in redact(f"later, somewhere: {secret}")  # registered before anything failed


@pytest.mark.parametrize(("url", "match"), [
    ("http://127.0.0.1:99999/", "port"),
    ("http://127.0.0.1:0/", "port"),
    ("http://127.0.0.1:http/", "port"),
    ("http://[::1", r"IPv6"),
    ("http://a b:1", "spaces"),
    ("127.0.0.1:9090", "http:// or https://"),
    ("http:///path", "with a host"),
    ("http://adm:InUrl999@127.0.0.1:1", "credentials"),
])
def test_check_http_url_is_one_line_naming_the_flag(url: str, match: str) -> None:
    with pytest.raises(UserError, match=match) as exc:
        check_http_url(url, "--kube-host")
    assert str(exc.value).startswith("--kube-host") and "\n" not in str(exc.value)
    assert "InUrl999" not in str(exc.value)


def test_check_http_url_accepts_ordinary_urls() -> None:
    for url in ("http://127.0.0.1:9090", "https://prom.monitoring.svc:9090/prefix/", "http://[::1]:8001"):
        assert check_http_url(url, "--prometheus") == url


def test_non_ascii_user_names_and_header_values_are_refused_naming_the_flag(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("pw-file-123\n")
    with pytest.raises(UserError, match="--prometheus-basic-auth-user"):
        PrometheusAccess("http://p:9090", basic_auth_user="us\u20acr", basic_auth_password_file=str(pw)).validate()
    with pytest.raises(UserError, match="--prometheus-header X-Token") as exc:
        PrometheusAccess("http://p:9090", headers=(("X-Token", "HdrS3cr\u20act"),)).validate()
    assert "HdrS3cr" not in str(exc.value)


# ------------------------------------------------------------------------------------------------ basic auth sent


class _Recorder(BaseHTTPRequestHandler):
    seen: list[str | None] = []
    body = (b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{"model_name":"llama-3-8b"},'
            b'"value":[1767225600,"3"]}]}}')

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        type(self).seen.append(self.headers.get("Authorization"))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    _Recorder.seen = []
    yield from serve_in_thread(ThreadingHTTPServer(("127.0.0.1", 0), _Recorder))


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(("userinfo", "user", "password"), [
    ("reader:a%2Fb%3Fc%23d-Enc0ded", "reader", "a/b?c#d-Enc0ded"),  # percent-encoded / ? #
    ("reader:p@ss:w0rd-Unesc4ped", "reader", "p@ss:w0rd-Unesc4ped"),  # unescaped @ and : (the last @ ends it)
    ("reader:p%C3%A4ss-%E2%82%AC-Utf8", "reader", "p\u00e4ss-\u20ac-Utf8"),  # non-ASCII: sent as UTF-8
])
def test_password_in_the_url_is_sent_as_basic_auth(recorder: str, userinfo: str, user: str, password: str) -> None:
    goal = load_goal(GOAL_PATH)
    url = f"http://{userinfo}@{recorder}"
    access = PrometheusAccess.from_url(url, timeout_s=5.0).validate()
    assert access.url == f"http://{recorder}" and "@" not in access.display_url
    src = PrometheusSource(url, goal, clock=lambda: 1_767_225_600.0, access=access, freshness_query=None)
    assert src.read().models["llama-3-8b"].in_flight == 3.0
    assert _Recorder.seen[-1] == _basic(user, password)
    assert password not in redact(f"{url} {password}")


def test_a_non_ascii_password_file_is_sent_as_utf8(recorder: str, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("p\u00e4ssw\u00f6rd-\u20ac-file\n", encoding="utf-8")
    goal = load_goal(GOAL_PATH)
    access = PrometheusAccess(f"http://{recorder}", timeout_s=5.0, basic_auth_user="reader",
                              basic_auth_password_file=str(pw)).validate()
    PrometheusSource(access.url, goal, clock=lambda: 1_767_225_600.0, access=access, freshness_query=None).read()
    assert _Recorder.seen[-1] == _basic("reader", "p\u00e4ssw\u00f6rd-\u20ac-file")


# ------------------------------------------------------------------------------------------------ the CLI


def _cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleetpilot", *argv], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={**os.environ, "KUBECONFIG": str(cwd / "no-such-kubeconfig")})


def _assert_one_line_exit_2(r: subprocess.CompletedProcess[str], names: str, secrets: tuple[str, ...],
                            *files: Path) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fleetpilot: error: "), r.stderr[-2000:]
    assert names in lines[0], lines[0]
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    texts = [r.stdout, r.stderr] + [f.read_text(errors="replace") for f in files if f.exists()]
    for secret in secrets:
        for text in texts:
            assert secret not in text, (secret, text[-500:])


@pytest.fixture
def dead() -> str:
    return f"127.0.0.1:{free_port()}"


def _run(*extra: str, tmp_path: Path, kube: tuple[str, ...] | None = None) -> list[str]:
    return ["run", "--goal", str(GOAL_PATH), "--policy", "hpa", "--once", "--warmup", "0", "--log-level", "DEBUG",
            "--audit", str(tmp_path / "audit.jsonl"),
            *(kube if kube is not None else ("--kube-host", f"http://127.0.0.1:{free_port()}")), *extra]


@pytest.mark.parametrize(("case", "names", "secrets"), [
    ("trace-slash", "--prometheus", ("Sl4sh/Pw9", "user:Sl4sh")),
    ("run-slash", "--prometheus", ("Sl4sh/Pw9pw", "user:Sl4sh", "Sl4sh")),
    ("trace-noscheme", "--prometheus", ("NoScheme77",)),
    ("run-noscheme", "--prometheus", ("NoScheme77",)),
    ("handover-noscheme", "--kube-host", ("KubeS3cret",)),
    ("handover-scheme", "--kube-host", ("KubeS3cret",)),
    ("handover-slash", "--kube-host", ("Kx7/S3cret", "Kx7")),
    ("run-kube-noscheme", "--kube-host", ("KubeS3cret",)),
    ("trace-port", "--prometheus", ("PortPw123",)),
    ("trace-ipv6", "--prometheus", ("Ipv6Pw123",)),
    ("run-port", "--prometheus", ("PortPw123",)),
    ("handover-ipv6", "--kube-host", ()),
    ("run-kube-ipv6", "--kube-host", ()),
    ("trace-user-euro", "--prometheus-basic-auth-user", ("FilePw-77",)),
    ("run-user-euro", "--prometheus-basic-auth-user", ("FilePw-77",)),
    ("trace-header-euro", "--prometheus-header", ("HdrS3cr",)),
    ("run-header-euro", "--prometheus-header", ("HdrS3cr",)),
])
def test_bad_urls_and_credentials_are_one_line_exit_2_never_echoed(
    case: str, names: str, secrets: tuple[str, ...], tmp_path: Path, dead: str
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("FilePw-77\n")
    out = str(tmp_path / "ti.csv")
    trace = ("trace", "import", "--range", "1h", "--out", out, "--prometheus")
    argv = {
        "trace-slash": (*trace, f"http://user:Sl4sh/Pw9@{dead}/"),
        "run-slash": _run("--prometheus", f"http://user:Sl4sh/Pw9pw@{dead}/", tmp_path=tmp_path),
        "trace-noscheme": (*trace, f"user:NoScheme77@{dead}"),
        "run-noscheme": _run("--prometheus", f"user:NoScheme77@{dead}", tmp_path=tmp_path),
        "handover-noscheme": ("handover", "--goal", str(GOAL_PATH), "--kube-host", f"admin:KubeS3cret@{dead}"),
        "handover-scheme": ("handover", "--goal", str(GOAL_PATH), "--kube-host", f"http://admin:KubeS3cret@{dead}"),
        "handover-slash": ("handover", "--goal", str(GOAL_PATH), "--kube-host", f"http://admin:Kx7/S3cret@{dead}"),
        "run-kube-noscheme": _run(tmp_path=tmp_path, kube=("--kube-host", f"admin:KubeS3cret@{dead}")),
        "trace-port": (*trace, "http://u:PortPw123@127.0.0.1:99999/"),
        "trace-ipv6": (*trace, "http://user:Ipv6Pw123@[::1"),
        "run-port": _run("--prometheus", "http://u:PortPw123@127.0.0.1:99999/", tmp_path=tmp_path),
        "handover-ipv6": ("handover", "--goal", str(GOAL_PATH), "--kube-host", "http://[::1"),
        "run-kube-ipv6": _run(tmp_path=tmp_path, kube=("--kube-host", "http://[::1")),
        "trace-user-euro": (*trace, f"http://{dead}", "--prometheus-basic-auth-user", "us\u20acr",
                            "--prometheus-basic-auth-password-file", str(pw)),
        "run-user-euro": _run("--prometheus", f"http://{dead}", "--prometheus-basic-auth-user", "us\u20acr",
                              "--prometheus-basic-auth-password-file", str(pw), tmp_path=tmp_path),
        "trace-header-euro": (*trace, f"http://{dead}", "--prometheus-header", "X-Token: HdrS3cr\u20act"),
        "run-header-euro": _run("--prometheus", f"http://{dead}", "--prometheus-header", "X-Token: HdrS3cr\u20act",
                                tmp_path=tmp_path),
    }[case]
    r = _cli(*argv, cwd=tmp_path)
    _assert_one_line_exit_2(r, names, secrets, tmp_path / "audit.jsonl")
    assert not (tmp_path / "audit.jsonl").exists()  # refused before the daemon started: nothing audited
    assert not (tmp_path / "ti.csv").exists()


def _kubeconfig(server: str, token: str = "tok-KUBECONFIG-5150") -> str:
    return (f"apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: {server!r}}}\n"
            f"contexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
            f"users:\n- name: u\n  user: {{token: {token}}}\n")


@pytest.mark.parametrize(("kind", "expect"), [
    ("random", "not UTF-8"),
    ("zero", "not a regular file"),
    ("fifo", "not a regular file"),
    ("huge", "more than the limit"),
    ("list", "mapping"),
    ("alias-bomb", "expands to more than"),
    ("garbage-structure", "cannot load Kubernetes configuration"),
    ("bad-server", "cannot load Kubernetes configuration"),
    ("missing", "not found"),
    ("token-file-zero", "not a regular file"),
])
@pytest.mark.parametrize("command", ["handover", "run"])
def test_unusable_kubeconfigs_are_one_line_exit_2(command: str, kind: str, expect: str, tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    if kind == "random":
        path.write_bytes(bytes([0x97, 0xFF, 0x00, 0x80]) * 1000)
    elif kind == "zero":
        path = Path("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)  # opened for reading, a FIFO without a writer would block for ever
    elif kind == "huge":
        with open(path, "wb") as f:
            f.truncate(64 << 20)
    elif kind == "list":
        path.write_text("- a\n- b\n")
    elif kind == "alias-bomb":
        lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
        lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
        path.write_text("\n".join(lines) + "\n")
    elif kind == "garbage-structure":
        path.write_text("apiVersion: v1\nclusters: 5\ncontexts: {a: b}\ncurrent-context: [1]\n")
    elif kind == "bad-server":
        path.write_text(_kubeconfig("https://[::1"))
    elif kind == "missing":
        path = tmp_path / "nope"
    elif kind == "token-file-zero":  # the files a kubeconfig names are read by the library without limits
        path.write_text(_kubeconfig("https://127.0.0.1:6443").replace("{token: tok-KUBECONFIG-5150}",
                                                                      "{tokenFile: /dev/zero}"))
    if command == "handover":
        argv = ("handover", "--goal", str(GOAL_PATH), "--kubeconfig", str(path))
    else:
        argv = tuple(_run("--prometheus", f"http://127.0.0.1:{free_port()}", tmp_path=tmp_path,
                          kube=("--kubeconfig", str(path))))
    r = _cli(*argv, cwd=tmp_path)
    _assert_one_line_exit_2(r, expect, ("tok-KUBECONFIG-5150",), tmp_path / "audit.jsonl")
    assert str(path) in r.stderr or path.name in r.stderr


def test_a_good_kubeconfig_loads_and_its_token_is_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(_kubeconfig("https://127.0.0.1:6443", token="tok-GOOD-KUBE-8642"))
    client = make_api_client(str(path))
    assert client.configuration.host == "https://127.0.0.1:6443"
    assert "tok-GOOD-KUBE-8642" not in redact("sent tok-GOOD-KUBE-8642")


def test_make_api_client_refuses_credentials_in_the_host() -> None:
    with pytest.raises(UserError, match="--kube-host") as exc:
        make_api_client(host="http://admin:HostPw-9911@127.0.0.1:1")
    assert "HostPw-9911" not in str(exc.value)


# ------------------------------------------------------------------------------------------------ run: flags first


class _Listener:
    """A listening socket nobody answers on: after the CLI exits, whether it ever connected is a non-blocking
    ``accept`` away (a completed connect sits in the backlog)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.setblocking(False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def connected(self) -> bool:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return False
        conn.close()
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(("flags", "names"), [
    (("--recalibrate-every", "soon"), "--recalibrate-every"),
    (("--recalibrate-every", "0s"), "--recalibrate-every"),
    (("--recalibrate-every", "1h", "--drift-margin", "50"), "--drift-margin"),
    (("--drift-margin", "nan"), "--drift-margin"),
    (("--take-over", "keda"), "--take-over"),
    (("--mode", "control", "--lease-name", "Bad_Name"), "--lease-name"),
    (("--mode", "control", "--lease-namespace", "Bad_NS"), "--lease-namespace"),
    (("--mode", "control", "--identity", ""), "--identity"),
    (("--metrics-port", "0", "--metrics-bind-address", "no-such-host.invalid"), "--metrics-bind-address"),
])
def test_run_checks_every_flag_before_contacting_anything(flags: tuple[str, ...], names: str, tmp_path: Path) -> None:
    kube, prom = _Listener(), _Listener()
    try:
        r = _cli(*_run("--prometheus", prom.url, *flags, tmp_path=tmp_path, kube=("--kube-host", kube.url)),
                 cwd=tmp_path)
        _assert_one_line_exit_2(r, names, ())
        assert not kube.connected(), "contacted Kubernetes before refusing a bad flag"
        assert not prom.connected(), "contacted Prometheus before refusing a bad flag"
    finally:
        kube.close()
        prom.close()
