"""The OpenAI routes' request reading and chat templates, without a server: what is refused (and
which field a refusal names) and how a template renders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ortserve.errors import Unsupported
from ortserve.http.chat_template import ChatTemplate
from ortserve.http.openai import _check_unsupported, _named_field, _prompt
from ortserve.http.tasks import BadField, text_list


def test_text_list_takes_a_string_or_strings_and_refuses_token_ids() -> None:
    assert text_list("hi", "input") == ["hi"]
    assert text_list(["a", "b"], "input") == ["a", "b"]
    for tokens in ([1, 2], [[1, 2], [3]]):
        with pytest.raises(BadField, match="token ids") as refused:
            text_list(tokens, "input")
        assert refused.value.param == "input"
    for wrong in (None, [], [1, "a"], {"a": 1}, 3):
        with pytest.raises(BadField, match="'input' must be a string"):
            text_list(wrong, "input")


def test_prompt_is_one_string() -> None:
    assert _prompt("hi") == "hi"
    assert _prompt(["hi"]) == "hi"
    with pytest.raises(BadField, match="one prompt per request"):
        _prompt(["a", "b"])
    with pytest.raises(BadField, match="token ids"):
        _prompt([1, 2, 3])
    with pytest.raises(BadField) as refused:
        _prompt(None)
    assert refused.value.param == "prompt"


@pytest.mark.parametrize(
    "body",
    [{"n": 1}, {"logprobs": None}, {"logprobs": False}, {"presence_penalty": 0.0},
     {"logit_bias": {}}, {"tools": []}, {"user": "me"}],
)  # fmt: skip
def test_fields_at_their_defaults_are_welcome(body: dict[str, Any]) -> None:
    _check_unsupported(body)


@pytest.mark.parametrize(
    "body",
    [{"n": 2}, {"n": 0}, {"best_of": 3}, {"logprobs": 1}, {"logprobs": True},
     {"frequency_penalty": 0.5}, {"suffix": "x"}, {"logit_bias": {"1": 5}}],
)  # fmt: skip
def test_fields_not_offered_are_refused_by_name(body: dict[str, Any]) -> None:
    [key] = body
    with pytest.raises(BadField, match=f"'{key}'") as refused:
        _check_unsupported(body)
    assert refused.value.param == key


def test_sampling_refusals_name_their_field() -> None:
    assert _named_field("sampling parameter 'top_p' must be a number, got 'x'") == "top_p"
    assert _named_field("sampling parameter temperature must be 0 or more") == "temperature"
    assert _named_field("model 'm' is not ready") is None


def _template(tmp_path: Path, config: dict[str, Any]) -> ChatTemplate | None:
    path = tmp_path / "tokenizer_config.json"
    path.write_text(json.dumps(config))
    return ChatTemplate.read(path)


def test_chat_template_renders_messages_with_the_special_tokens(tmp_path: Path) -> None:
    template = _template(tmp_path, {
        "bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>",
        "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}"
                         "{{ eos_token }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}",
    })  # fmt: skip
    assert template is not None
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert template.render(messages) == "<s>[user]hi</s>[assistant]"


def test_chat_template_refusals(tmp_path: Path) -> None:
    assert _template(tmp_path, {"model_max_length": 64}) is None
    named = _template(tmp_path, {"chat_template": [{"name": "default", "template": "{{ 1 }}"}]})
    assert named is not None
    strict = _template(tmp_path, {
        "chat_template": "{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}"
                         "{% endif %}ok",
    })  # fmt: skip
    assert strict is not None
    with pytest.raises(BadField, match="user first"):
        strict.render([{"role": "system", "content": "x"}])
    for wrong in (None, [], [{"content": "x"}], [{"role": "user", "content": [{"type": "image"}]}]):
        with pytest.raises(BadField) as refused:
            strict.render(wrong)
        assert refused.value.param == "messages"
    sandboxed = _template(tmp_path, {"chat_template": "{{ messages.__class__.__mro__ }}"})
    assert sandboxed is not None
    with pytest.raises((BadField, Unsupported)):
        sandboxed.render([{"role": "user", "content": "x"}])
