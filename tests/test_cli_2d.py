"""The 2D command line (`cmlite demo`, `cmlite theorem`) and the thread helper."""
import pytest
import torch

import cmlite
import cmlite.demo
import cmlite.theory.report
from cmlite.cli import main
from cmlite.threads import ENV_VAR, default_threads, set_small_model_threads, small_model_threads


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"cmlite {cmlite.__version__}"


@pytest.mark.parametrize("argv", [["demo", "--st", "5"], ["demo", "--bogus"], ["theorem", "--lear"]])
def test_no_abbreviations_and_subcommand_usage_on_errors(argv, capsys):
    """`--st` is not silently `--steps`; the error shows the subcommand's usage, not the top-level one."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"usage: cmlite {argv[0]}" in err and "unrecognized arguments" in err


def test_out_folder_is_checked_before_any_training(tmp_path, monkeypatch, capsys):
    def no_training(*a, **k):
        raise AssertionError("the demo ran although --out cannot be written")
    monkeypatch.setattr(cmlite.demo, "run_demo", no_training)
    for out in (tmp_path / "missing" / "demo.png", tmp_path):
        with pytest.raises(SystemExit) as e:
            main(["demo", "--out", str(out)])
        assert e.value.code == 2
        assert "usage: cmlite demo" in capsys.readouterr().err


def test_every_demo_option_has_help(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    for opt in ("--seed", "--threads", "--out", "--steps", "--json", "--ct"):
        assert opt in out
    assert "random seed" in out


@pytest.mark.parametrize("cmd, module, func", [("demo", cmlite.demo, "run_demo"),
                                              ("theorem", cmlite.theory.report, "run_theorem")])
def test_threads_option_reaches_the_command(cmd, module, func, monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(module, func, lambda **kw: seen.update(kw) or 0)
    argv = [cmd, "--threads", "3"] + (["--out", str(tmp_path / "d.png")] if cmd == "demo" else [])
    assert main(argv) == 0
    assert seen["threads"] == 3
    with pytest.raises(SystemExit):
        main([cmd, "--threads", "0"])


def test_default_threads_env_and_validation(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert default_threads() == 1
    assert default_threads(4) == 4
    monkeypatch.setenv(ENV_VAR, "2")
    assert default_threads() == 2
    assert default_threads(3) == 3              # an explicit value wins over the environment
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(ENV_VAR, bad)
        with pytest.raises(ValueError, match=ENV_VAR):
            default_threads()
    with pytest.raises(ValueError):
        default_threads(0)


def test_thread_helpers_set_and_restore(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    before = torch.get_num_threads()
    try:
        with small_model_threads(2) as n:
            assert n == 2 and torch.get_num_threads() == 2
        assert torch.get_num_threads() == before
        previous = set_small_model_threads()
        assert previous == before and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_demo_runs_with_the_requested_threads_and_restores_them(monkeypatch, tmp_path, capsys):
    """`cmlite demo` trains with --threads intra-op threads (recorded in its JSON) and gives the previous
    setting back afterwards (the test suite itself runs with one thread)."""
    import json
    before = torch.get_num_threads()
    assert main(["demo", "--json", "--steps", "5", "--threads", "2", "--out", ""]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["timings"]["threads"] == 2 and res["figure"] is None
    assert torch.get_num_threads() == before
    assert {"off_mode"} <= set(res["rows"][-1])
