"""`atelier chat`: one message with --json, a follow-up in the same thread, text output, errors."""

from __future__ import annotations

import json

import yaml
from agent_helpers import tiny_overrides

from ui.cli import main


def _profile(tmp_path) -> str:
    """The tiny profile with the test data root, as a YAML file `--profile` can take."""
    from agent.config import profiles_dir

    data = yaml.safe_load((profiles_dir() / "tiny.yaml").read_text())
    for section, values in tiny_overrides(tmp_path / "data").items():
        data.setdefault(section, {}).update(values)
    path = tmp_path / "tiny-test.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_json_turn_and_a_follow_up_in_the_same_thread(tmp_path, capsys):
    profile = _profile(tmp_path)
    assert main(["chat", "--profile", profile, "--json", "/generate a lighthouse at dusk --aspect 9:16"]) == 0
    out, err = capsys.readouterr()
    first = json.loads(out)
    assert set(first) >= {"answer", "tool_calls", "images"}
    assert first["tool_calls"] == [{"name": "generate_image",
                                    "args": {"prompt": "a lighthouse at dusk", "aspect_ratio": "9:16"}}]
    assert "step 2/2" in err  # progress on stderr
    ref = first["images"][0]["ref"]
    assert first["answer"] == "Here is a new picture of a lighthouse at dusk (48x96, #1)."  # from the result

    assert main(["chat", "--profile", profile, "--json", "/relight warm left"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["tool_calls"][0]["args"]["image"] == ref  # same thread: acts on that image
    assert second["answer"].startswith("I relit #1") and "#2" in second["answer"]


def test_demo_planner_and_text_output(tmp_path, capsys):
    profile = _profile(tmp_path)
    assert main(["chat", "--profile", profile, "--thread", "other", "a red fox in the snow"]) == 0
    out = capsys.readouterr().out
    assert "[generate_image]" in out and "saved img_" in out and ".png" in out
    assert "Here is a new picture of a red fox in the snow" in out  # the answer, composed from the result
    assert "  #1 · " in out and "generated: a red fox in the snow · watermark " in out  # the line under the image


def test_a_bad_command_is_one_line_on_stderr(tmp_path, capsys):
    assert main(["chat", "--profile", _profile(tmp_path), "/paint a cat"]) == 2
    err = capsys.readouterr().err
    assert "unknown command /paint" in err and "Traceback" not in err
