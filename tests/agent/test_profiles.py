"""Profiles: loading, precedence of env and CLI overrides, clear errors."""

from __future__ import annotations

import pytest

from agent.config import ProfileError, available_profiles, load_profile, parse_overrides


def test_every_shipped_profile_loads():
    names = available_profiles()
    assert {"tiny", "offline", "qwen-image-2.1", "qwen-image-2511", "remote"} <= set(names)
    for name in names:
        profile = load_profile(name, environ={})
        assert profile.name == name


def test_default_is_offline_and_env_picks_another():
    assert load_profile(environ={}).name == "offline"
    assert load_profile(environ={"ATELIER_PROFILE": "tiny"}).name == "tiny"


def test_offline_uses_the_gguf_planner_with_random_weight_engines():
    profile = load_profile("offline", environ={})
    assert profile.planner.kind == "gguf"
    assert profile.engine.source == "random"
    assert profile.random_weights_notice


def test_env_overrides_yaml_and_cli_overrides_env():
    env = {"ATELIER_ENGINE__STEPS": "7", "ATELIER_STORE__ROOT": "/data/atelier"}
    profile = load_profile("tiny", environ=env)
    assert profile.engine.steps == 7 and profile.store.root == "/data/atelier"
    profile = load_profile("tiny", parse_overrides(["engine.steps=3"]), environ=env)
    assert profile.engine.steps == 3 and profile.store.root == "/data/atelier"


def test_store_paths_follow_the_root():
    profile = load_profile("tiny", {"store": {"root": "/srv/a"}}, environ={})
    assert profile.store.images_url() == "/srv/a/images"
    assert profile.store.sessions_url() == "/srv/a/sessions.sqlite"


def test_unknown_profile_names_the_available_ones():
    with pytest.raises(ProfileError, match="unknown profile 'nope'.*tiny"):
        load_profile("nope", environ={})


def test_invalid_value_is_one_readable_line():
    with pytest.raises(ProfileError) as err:
        load_profile("tiny", {"engine": {"steps": "many"}}, environ={})
    assert "engine.steps" in str(err.value) and "\n" not in str(err.value)


def test_unknown_section_is_rejected():
    with pytest.raises(ProfileError, match="bogus"):
        load_profile("tiny", {"bogus": {"x": 1}}, environ={})


def test_malformed_cli_override():
    with pytest.raises(ProfileError, match="section.field=value"):
        parse_overrides(["engine.steps"])


def test_profile_from_a_yaml_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("planner: {kind: scripted}\nengine: {steps: 5}\n")
    profile = load_profile(str(path), environ={})
    assert profile.name == "mine" and profile.engine.steps == 5
