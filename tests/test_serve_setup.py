"""`pixelcascade serve` without a browser: Gradio is an optional extra whose absence is one line naming the install
command; the server binds to 127.0.0.1 unless told otherwise, warns when it is, and never shares unless asked."""

from __future__ import annotations

import sys

import pytest

from pixelcascade import serve
from pixelcascade.cli import main


def test_without_gradio_the_command_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed: importing it raises ImportError
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install -e ".[ui]"' in err[0]


@pytest.mark.parametrize("argv, host, warned, share", [
    ([], "127.0.0.1", False, False),
    (["--host", "0.0.0.0"], "0.0.0.0", True, False),
    (["--share"], "127.0.0.1", False, True),
])
def test_host_warning_and_share_only_when_asked(monkeypatch, capsys, argv, host, warned, share):
    pytest.importorskip("gradio")
    launched = {}

    class App:
        def launch(self, **kw):
            launched.update(kw)
    monkeypatch.setattr("pixelcascade.api.load", lambda model, **kw: object())
    monkeypatch.setattr(serve, "build_app", lambda *a, **kw: App())
    assert main(["serve", *argv]) == 0
    assert launched["server_name"] == host and launched["share"] is share
    assert ("warning: serving on 0.0.0.0" in capsys.readouterr().err) is warned
