"""mtbert-search's bad-input paths: exit 2 with one line naming the file and key, before Ray starts
or any results folder is made (search/space/file.py's own tests cover the many ways a space is wrong)."""

from __future__ import annotations

import pytest

from search.cli import main


@pytest.mark.parametrize("body, message", [
    ("tune: {reduction_factor: 1}\n", "tune.reduction_factor: reduction_factor is 1, but must be >= 2"),
    ("search:\n  optim.lrr: {loguniform: [1.0e-5, 1.0e-4]}\n", "search.optim.lrr: is not a run setting"),
    ("search:\n  optim.lr: {loguniform: [0, 1.0e-4]}\n", "search.optim.lr: loguniform bounds are [0, 0.0001]"),
    ("optim: {lr: 0}\n", "optim.lr: is 0.0, but must be > 0"),
])  # fmt: skip
def test_bad_space_exits_2_before_ray_or_any_folder(tmp_path, capsys, body, message):
    import ray

    space = tmp_path / "bad.yaml"
    results = tmp_path / "results"
    space.write_text(f"model: {{encoder: tiny}}\n{body}" + ("" if "tune:" in body else "tune: {}\n"))
    text = space.read_text().replace("tune: {", f"tune: {{storage_path: {results}, ")
    space.write_text(text.replace(", }", "}"))
    assert main([str(space)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{space}: " in err and message in err, err
    assert not results.exists() and not ray.is_initialized()


def test_bad_set_exits_2(tmp_path, capsys):
    space = tmp_path / "ok.yaml"
    space.write_text(f"model: {{encoder: tiny}}\ntune: {{storage_path: {tmp_path / 'results'}}}\n")
    assert main([str(space), "--set", "tune.num_samples=0"]) == 2
    assert "tune.num_samples" in capsys.readouterr().err
    assert main([str(space), "--set", "optim.lr"]) == 2
    assert "must look like KEY=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("command", [["status"], ["export", "--out", "OUT"], ["resume"]])
def test_commands_on_a_folder_without_a_search_exit_2(tmp_path, capsys, command):
    args = [a.replace("OUT", str(tmp_path / "out")) for a in command]
    for folder, words in ((tmp_path, "holds no mtbert search"), (tmp_path / "missing", "is not a folder")):
        assert main([args[0], str(folder), *args[1:]]) == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_top_k_must_be_positive(tmp_path, capsys):
    from search.launch import Launch

    Launch("space.yaml").save(tmp_path, "{}\n")
    assert main(["export", str(tmp_path), "--top-k", "0", "--out", str(tmp_path / "out")]) == 2
    assert "--top-k is 0, but must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--set", "tune.num_samples=2", "optim.lr=3e-5", "spaces/x.yaml"],
    ["spaces/x.yaml", "--set", "tune.num_samples=2", "optim.lr=3e-5", "--smoke"],
    ["--set", "tune.num_samples=2", "--set", "optim.lr=3e-5", "spaces/x.yaml"],
    ["--set", "tune.num_samples=2", "optim.lr=3e-5", "--", "spaces/x.yaml"],
])  # fmt: skip
def test_set_takes_several_pairs_after_one_flag(argv):
    from search.cli import parse_search_args

    args = parse_search_args(argv)
    assert args.space == "spaces/x.yaml" and args.overrides == ["tune.num_samples=2", "optim.lr=3e-5"]


def test_several_set_pairs_all_apply(tmp_path, capsys):
    space = tmp_path / "ok.yaml"
    space.write_text(f"model: {{encoder: tiny}}\ntune: {{storage_path: {tmp_path / 'results'}}}\n")
    assert main(["--set", "optim.lr=1e-5", "tune.num_samples=0", str(space)]) == 2  # the second pair is read
    assert "tune.num_samples" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
