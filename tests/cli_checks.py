"""The command line's contract for bad input, checked the same way by every CLI test."""


def assert_clean_error(result, *words, out=None):
    """Exit code 2, one line on stderr starting with "error:" and naming the problem (`words`),
    no traceback, and nothing written at `out`."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line on stderr, got:\n{result.stderr!r}"
    assert lines[0].startswith("error:"), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in result.output
    if out is not None:
        assert not out.exists(), "a failed command must write nothing"
