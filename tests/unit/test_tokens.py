"""Token estimates used when the upstream reports no usage (about four characters a token)."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.usage import tokens


@pytest.mark.parametrize(
    ("text", "expected"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100)]
)
def test_estimate_text_rounds_up_to_whole_tokens(text: str, expected: int) -> None:
    assert tokens.estimate_text(text) == expected


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(max_size=500))
def test_estimate_text_is_a_quarter_of_the_characters_and_more_outside_ascii(text: str) -> None:
    extra_bytes = len(text.encode("utf-8", "replace")) - len(text)
    assert tokens.estimate_text(text) == math.ceil(len(text) / 4) + extra_bytes // 2


def test_content_text_of_a_plain_string() -> None:
    assert tokens.content_text("hello") == "hello"


def test_content_text_joins_the_text_parts_only() -> None:
    parts = [
        {"type": "text", "text": "Describe "},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "this image."},
        {"type": "text", "text": None},
        "not a part",
    ]
    assert tokens.content_text(parts) == "Describe this image."


@pytest.mark.parametrize("content", [None, 42, {"text": "dict, not list"}])
def test_content_text_of_anything_else_is_empty(content: Any) -> None:
    assert tokens.content_text(content) == ""


def test_estimate_chat_prompt_counts_text_and_per_message_overhead() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},  # 9 chars -> 3 tokens
        {"role": "user", "content": [{"type": "text", "text": "Hi!"}]},  # 3 chars -> 1 token
        {"role": "assistant", "content": None, "tool_calls": []},  # 0 tokens
    ]
    assert tokens.estimate_chat_prompt(messages) == 3 + (3 + 3) + (3 + 1) + (3 + 0)


def test_estimate_chat_counts_images_tool_calls_definitions_and_non_ascii_text() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    call = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    payload = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is it?"}, image, image]},
            {"role": "assistant", "content": None, "tool_calls": call},
        ],
        "tools": tools,
    }
    text_only = tokens.estimate_chat_prompt(
        [{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": None}]
    )
    extra = 2 * tokens.IMAGE_TOKENS + tokens.estimate_chars(len(orjson.dumps(call)))
    extra += tokens.estimate_chars(len(orjson.dumps(tools)))
    assert tokens.estimate_chat(payload) == text_only + extra
    # Text outside ASCII takes more tokens than four characters each.
    assert tokens.estimate_text("a" * 40) == 10
    assert tokens.estimate_text("漢" * 40) == 10 + 40


@pytest.mark.parametrize("messages", [None, "hello", {"role": "user"}])
def test_estimate_chat_prompt_of_a_non_list_is_zero(messages: Any) -> None:
    assert tokens.estimate_chat_prompt(messages) == 0


def test_estimate_chat_prompt_skips_non_dict_messages() -> None:
    assert tokens.estimate_chat_prompt(["junk", 3]) == 3
    assert tokens.estimate_chat_prompt([]) == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abcdefgh", 2),
        (["abcd", "abcde"], 1 + 2),
        ([101, 2023, 2003], 3),  # token ids count one each
        ([[1, 2, 3], [4, 5]], 5),  # batches of token ids
        ([], 0),
        (None, 0),
        (12, 0),
    ],
)
def test_estimate_input(value: Any, expected: int) -> None:
    assert tokens.estimate_input(value) == expected


def chunk(**delta: Any) -> dict[str, Any]:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}


def test_generated_chars_of_content() -> None:
    assert tokens.generated_chars(chunk(content="Hello")) == 5
    assert tokens.generated_chars(chunk(content=None, role="assistant")) == 0


def test_generated_chars_of_refusal_and_reasoning() -> None:
    assert tokens.generated_chars(chunk(refusal="I can't")) == 7
    assert tokens.generated_chars(chunk(reasoning_content="thinking", content="ok")) == 10


def test_generated_chars_of_tool_call_arguments() -> None:
    calls = [
        {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "f", "arguments": '{"ci'},
        },
        {"index": 1, "function": {"arguments": 'ty":"Oslo"}'}},
        {"index": 2, "function": {"name": "g"}},
        "junk",
    ]
    assert tokens.generated_chars(chunk(tool_calls=calls)) == len('{"city":"Oslo"}')


def test_generated_chars_of_legacy_completions() -> None:
    legacy = {"object": "text_completion", "choices": [{"index": 0, "text": "Once upon"}]}
    assert tokens.generated_chars(legacy) == len("Once upon")


def test_generated_chars_adds_several_choices() -> None:
    obj = {
        "choices": [
            {"index": 0, "delta": {"content": "ab"}},
            {"index": 1, "delta": {"content": "cd"}},
            "junk",
        ]
    }
    assert tokens.generated_chars(obj) == 4


@pytest.mark.parametrize(
    "obj",
    [
        None,
        "data",
        [],
        {"choices": []},
        {"choices": None},
        chunk(role="assistant"),
        chunk(content=None),
        {"choices": [{"delta": "text"}]},
        {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}},
    ],
)
def test_generated_chars_without_generated_text_is_zero(obj: Any) -> None:
    assert tokens.generated_chars(obj) == 0


def test_a_responses_request_counts_instructions_input_items_and_tools() -> None:
    tool = {"type": "function", "name": "lookup"}
    payload = {
        "instructions": "x" * 40,
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "y" * 80}]},
            {"type": "function_call_output", "call_id": "c1", "output": "z" * 12},
            {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
        ],
        "tools": [tool],
    }
    call = payload["input"][2]  # type: ignore[index]
    expected = (
        10  # instructions
        + tokens.estimate_chat_prompt([payload["input"][0]])  # type: ignore[index]
        + 3  # the function's output
        + tokens.estimate_chars(len(orjson.dumps(call)))  # another item: its JSON
        + tokens.estimate_chars(len(orjson.dumps([tool])))
    )
    assert tokens.estimate_responses(payload) == expected
    assert tokens.estimate_responses({"input": "hello"}) == 3 + 2 + 3


def test_generated_text_of_a_responses_answer_and_its_events() -> None:
    answer = {
        "object": "response",
        "output": [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "r" * 6}]},
            {"type": "message", "content": [{"type": "output_text", "text": "x" * 40}]},
            {"type": "function_call", "arguments": "y" * 8},
        ],
    }
    assert tokens.generated_chars(answer) == 54
    assert tokens.generated_chars({"type": "response.output_text.delta", "delta": "abcd"}) == 4
    assert (
        tokens.generated_chars({"type": "response.function_call_arguments.delta", "delta": "{}"})
        == 2
    )
    assert tokens.generated_chars({"type": "response.output_text.done", "text": "abcd"}) == 0


@pytest.mark.parametrize("kind", [[], {}, ["image_url"]])
def test_a_part_whose_type_is_not_a_string_is_no_image(kind: Any) -> None:
    """(An array or an object as a part's ``type`` was a TypeError, a 500.)"""
    messages = [{"role": "user", "content": [{"type": kind, "text": "abcd"}]}]
    assert tokens.estimate_chat_prompt(messages) == tokens.estimate_chat_prompt(
        [{"role": "user", "content": "abcd"}]
    )
