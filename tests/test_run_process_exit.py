"""How a command-line run ends its process (`cvsuite.commands.end_process`): the exit code, everything printed,
the exit handlers and unfinished non-daemon threads, as Python's own exit has them; commands called with an
argument list (the API, these tests) return instead."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import cvsuite.commands
from cvsuite.commands import main, tool_main

SCRIPT = textwrap.dedent(
    """
    import atexit, sys, threading, time
    from pathlib import Path
    from cvsuite.commands import end_process

    out = Path(sys.argv[1])
    atexit.register(lambda: (out / "atexit").write_text("ran"))
    def late():
        time.sleep(0.3)
        (out / "thread").write_text("done")
    threading.Thread(target=late).start()
    sys.stdout.write("no newline, not flushed")
    sys.stderr.write("err tail")
    end_process(3)
    (out / "after").write_text("must not run")
    """
)


def test_end_process_keeps_the_code_the_output_the_exit_handlers_and_threads(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert proc.stdout == "no newline, not flushed" and proc.stderr.endswith("err tail")
    assert (tmp_path / "atexit").read_text() == "ran" and (tmp_path / "thread").read_text() == "done"
    assert not (tmp_path / "after").exists()


class Ended(Exception):
    pass


@pytest.fixture
def ended(monkeypatch) -> list[int]:
    codes: list[int] = []

    def record(code: int):
        codes.append(code)
        raise Ended

    monkeypatch.setattr(cvsuite.commands, "end_process", record)
    return codes


@pytest.mark.parametrize("entry", ["main", "tool_main"])
def test_the_process_own_command_line_ends_the_process_an_argument_list_returns(ended, monkeypatch, entry, capsys):
    monkeypatch.setattr(sys, "argv", ["cvsuite", "--help"] if entry == "main" else ["tools/train.py", "--help"])
    assert "torch" in sys.modules  # as after any command that trains, evaluates or predicts
    with pytest.raises(Ended):
        main() if entry == "main" else tool_main("train")
    assert ended == [0] and "usage:" in capsys.readouterr().out
    assert (main(["--help"]) if entry == "main" else tool_main("train", ["--help"])) == 0
    assert ended == [0]  # not called again
    # Without torch loaded (--help) the interpreter's own exit is quick: the code is returned to it.
    monkeypatch.delitem(sys.modules, "torch")
    assert (main() if entry == "main" else tool_main("train")) == 0
    assert ended == [0]
