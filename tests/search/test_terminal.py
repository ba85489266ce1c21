"""What a user reads in the terminal during a search: no line pointing into Ray's own session folder,
Ray's token warning as one note of ours, the line to watch the search at its start and the next
steps at its end, each naming the search's real folder. Reads the session's smoke search
(``smoke_search``: run with ``--json``, so everything but the result went to stderr)."""

from __future__ import annotations

from search.engine.session import token_note


def lines_of(smoke_search) -> list[str]:
    return smoke_search["stderr"].splitlines()


def test_no_line_points_into_rays_session_folder(smoke_search):
    lines = lines_of(smoke_search)
    wrong = [line for line in lines if "/tmp/ray/session" in line or "driver_artifacts" in line]
    assert wrong == [] and lines, wrong
    assert not any("To visualize your results with TensorBoard" in line for line in lines)


def test_the_start_says_how_to_watch_and_the_end_what_comes_next(smoke_search):
    lines = lines_of(smoke_search)
    experiment = str(smoke_search["experiment"])
    watch = [i for i, line in enumerate(lines) if line.startswith("watch it: ")]
    assert len(watch) == 1, lines[:40]
    assert f"tensorboard --logdir {experiment}" in lines[watch[0]]
    assert f"mtbert-search status {experiment}" in lines[watch[0]]
    first_trial = next(i for i, line in enumerate(lines) if "Trial status" in line)
    assert watch[0] < first_trial  # before Ray's progress table starts
    end = lines.index("next steps:")
    assert end > max(i for i, line in enumerate(lines) if "Trial status" in line)
    steps = lines[end + 1 : end + 5]
    for command in (f"mtbert-search export {experiment} ", f"mtbert-search ensemble {experiment} ",
                    f"mtbert-search report {experiment} "):  # fmt: skip
        assert sum(line.strip().startswith(command) and f"--out {experiment}/" in line for line in steps) == 1, steps


def test_rays_token_warning_is_one_note_of_ours(smoke_search):
    lines = lines_of(smoke_search)
    token = [line for line in lines if "token authentication" in line.lower()]
    assert token == [token_note("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=...")]
    assert not any("authentication_token_setup" in line or " WARNING " in line for line in lines)
    assert not any("A new study created" in line for line in lines)  # Optuna's INFO line, with its timestamp


def test_token_notes_say_what_ray_said():
    assert "runs with token authentication" in token_note("Token authentication is enabled for this Ray cluster.")
    assert "without token authentication" in token_note("Token authentication is disabled for this Ray cluster.")
    assert token_note("Something new. For more information, see x") == "note: Ray: Something new."
