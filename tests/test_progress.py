"""Tests of tfface.align.progress: a redrawn line on a terminal, one log line per 10% otherwise."""

import io

from absl import logging

from tfface.align.progress import Progress


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_terminal_bar_redraws_one_line_and_ends_with_newline(monkeypatch):
    stream = FakeTerminal()
    bar = Progress(4, "job", stream=stream, width=8)
    monkeypatch.setattr(bar, "_last_draw", -1e9)  # no throttling in the test
    bar.update(1, failed=1)
    bar.close()
    text = stream.getvalue()
    first, update, final = text.split("\r")  # drawn at once, after the update, at close
    assert first.startswith("job [>       ] 0/4")
    assert update.startswith("job [==>     ] 1/4") and "failures 1" in update
    assert final == update + "\n" or (final.startswith("job [==>     ] 1/4") and final.endswith("\n"))
    assert text.count("\n") == 1


def test_non_terminal_logs_every_tenth(monkeypatch):
    messages = []
    monkeypatch.setattr(logging, "info", lambda fmt, *args: messages.append(fmt % args))
    bar = Progress(100, "job", stream=io.StringIO())
    for _ in range(100):
        bar.update(1)
    bar.close()
    assert len(messages) == 10 and "10/100" in messages[0] and "100/100" in messages[-1]
    quiet = Progress(10, "job", enabled=False, stream=FakeTerminal())
    quiet.update(10)
    quiet.close()
    assert quiet.stream.getvalue() == ""
