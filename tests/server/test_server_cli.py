"""The command line, without starting a server."""

from __future__ import annotations

import pytest

from server.cli import main, serve


def test_metanet_serve_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "usage: metanet serve" in out and "--api-keys-file" in out and "--workers" in out


@pytest.mark.parametrize("argv", [["--port", "abc"], ["--port", "80"], ["--workers", "0"], ["--bogus"]])
def test_bad_options_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        serve(argv)
    assert exited.value.code == 2 and "error" in capsys.readouterr().err


def test_a_missing_api_keys_file_is_a_usage_error(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # serve() points prometheus at a metrics folder through the environment; in this process that
    # would leak into every server the later tests start (their workers' gauges would mix), so the
    # variable is set here and undone after the test.
    (tmp_path / "metrics").mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    missing = tmp_path / "api-keys"
    with pytest.raises(SystemExit) as exited:
        serve(["--data-dir", str(tmp_path / "data"), "--api-keys-file", str(missing)])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert f"cannot read the API keys file {missing} (No such file or directory)" in err
