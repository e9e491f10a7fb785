"""Reading Qwen tool calls out of imperfect model text."""

from agent.planners.parsing import format_tool_call, parse_tool_calls


def test_single_clean_call_and_no_text():
    r = parse_tool_calls('<tool_call>\n{"name": "generate_image", "arguments": {"prompt": "a fox", "count": 2}}\n</tool_call>')
    assert [(c.name, c.args) for c in r.tool_calls] == [("generate_image", {"prompt": "a fox", "count": 2})]
    assert r.text == ""
    assert r.malformed == []


def test_several_calls_with_stray_text_around():
    text = (
        "Sure! Let me do both.\n<tool_call>\n{\"name\": \"adjust_image\", \"arguments\": {\"image\": \"img_0123abcd\", \"exposure_ev\": 1}}\n</tool_call>\n"
        "and then\n<tool_call>{\"name\": \"revert\", \"arguments\": {\"image\": \"img_0123abcd\"}}</tool_call> done."
    )
    r = parse_tool_calls(text)
    assert [c.name for c in r.tool_calls] == ["adjust_image", "revert"]
    assert r.tool_calls[0].args["exposure_ev"] == 1
    assert "Sure! Let me do both." in r.text and "and then" in r.text and "done." in r.text
    assert "<tool_call>" not in r.text
    assert r.tool_calls[0].id != r.tool_calls[1].id


def test_near_json_single_quotes_trailing_commas_python_literals():
    r = parse_tool_calls("<tool_call>{'name': 'edit_image', 'arguments': {'image': 'img_0123abcd', 'instruction': 'add a hat', 'preserve_identity': False, 'region': None,},}</tool_call>")
    assert len(r.tool_calls) == 1
    assert r.tool_calls[0].args == {"image": "img_0123abcd", "instruction": "add a hat", "preserve_identity": False, "region": None}


def test_unquoted_keys_and_missing_closing_tag_and_brace():
    r = parse_tool_calls('<tool_call>\n{name: "relight_image", arguments: {image: "img_0123abcd", direction: "left", intensity: 1.5}')
    assert len(r.tool_calls) == 1
    call = r.tool_calls[0]
    assert call.name == "relight_image"
    assert call.args == {"image": "img_0123abcd", "direction": "left", "intensity": 1.5}


def test_arguments_given_as_json_string():
    r = parse_tool_calls('<tool_call>{"name": "reframe_image", "arguments": "{\\"image\\": \\"img_0123abcd\\", \\"zoom\\": 0.7}"}</tool_call>')
    assert r.tool_calls[0].args == {"image": "img_0123abcd", "zoom": 0.7}


def test_code_fence_inside_and_without_tags():
    inside = parse_tool_calls('<tool_call>\n```json\n{"name": "revert", "arguments": {"image": "img_0123abcd"}}\n```\n</tool_call>')
    assert inside.tool_calls[0].name == "revert"
    bare = parse_tool_calls('Here you go:\n```json\n{"name": "generate_image", "arguments": {"prompt": "a boat"}}\n```')
    assert [c.name for c in bare.tool_calls] == ["generate_image"]
    assert bare.text == "Here you go:"


def test_bare_json_object_openai_shape_and_python_call():
    bare = parse_tool_calls('I will call {"type": "function", "function": {"name": "revert", "arguments": {"image": "img_0123abcd"}}} now')
    assert bare.tool_calls[0].name == "revert" and bare.tool_calls[0].args == {"image": "img_0123abcd"}
    assert bare.text == "I will call  now"
    py = parse_tool_calls('generate_image(prompt="a cat", count=2)')
    assert (py.tool_calls[0].name, py.tool_calls[0].args) == ("generate_image", {"prompt": "a cat", "count": 2})


def test_list_of_calls_in_one_block():
    r = parse_tool_calls('<tool_call>[{"name": "revert", "arguments": {"image": "img_0123abcd"}}, {"name": "adjust_image", "arguments": {"image": "img_0123abcd"}}]</tool_call>')
    assert [c.name for c in r.tool_calls] == ["revert", "adjust_image"]


def test_unreadable_bodies_go_to_malformed():
    r = parse_tool_calls("<tool_call>please generate a cat</tool_call><tool_call>{\"arguments\": {\"x\": 1}}</tool_call>")
    assert r.tool_calls == []
    assert r.malformed == ["please generate a cat", '{"arguments": {"x": 1}}']


def test_arguments_that_are_not_an_object_are_malformed():
    r = parse_tool_calls('<tool_call>{"name": "revert", "arguments": [1, 2]}</tool_call>')
    assert r.tool_calls == [] and len(r.malformed) == 1


def test_plain_text_is_just_text():
    r = parse_tool_calls("Hi! I can make and edit images. What would you like?<|im_end|>")
    assert r.tool_calls == [] and r.malformed == []
    assert r.text == "Hi! I can make and edit images. What would you like?"
    assert r.raw.endswith("<|im_end|>")


def test_text_with_braces_that_are_not_calls_stays_text():
    r = parse_tool_calls("Use a ratio like {16:9} or {\"a\": 1} if you want.")
    assert r.tool_calls == []
    assert "{16:9}" in r.text


def test_format_round_trip():
    text = format_tool_call("edit_image", {"image": "img_0123abcd", "instruction": "café sign"})
    r = parse_tool_calls(text)
    assert (r.tool_calls[0].name, r.tool_calls[0].args) == ("edit_image", {"image": "img_0123abcd", "instruction": "café sign"})
