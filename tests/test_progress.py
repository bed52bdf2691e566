import io

from matscale.progress import progress_bar


def test_a_bar_into_a_file_writes_few_whole_lines() -> None:
    stream = io.StringIO()  # not a terminal
    bar = progress_bar(total=1000, desc="work", unit=" items", file=stream)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= 3 and "1000/1000" in lines[-1]


def test_a_disabled_bar_writes_nothing() -> None:
    stream = io.StringIO()
    with progress_bar(total=5, desc="work", unit=" items", file=stream, enabled=False) as bar:
        bar.update(5)
    assert stream.getvalue() == ""


def test_a_bar_into_a_file_writes_no_line_at_its_start() -> None:
    """`eval` that failed at once printed "evaluating: 0 structures" above its error (and,
    never closed, again below it): into a file a bar writes its lines as it goes and ends, not
    when it is made."""
    stream = io.StringIO()
    bar = progress_bar(total=10, desc="work", unit=" items", file=stream)
    assert stream.getvalue() == ""
    bar.update(3)
    bar.close()
    assert stream.getvalue().splitlines() == [stream.getvalue().strip()]  # one line: the end
    assert "3/10" in stream.getvalue()
