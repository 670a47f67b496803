"""Chat templates of generation models, for ``/v1/chat/completions``.

A Hugging Face tokenizer_config.json may carry a ``chat_template`` (jinja2): it turns a list of
messages into the one prompt the model was trained on. Rendered as transformers renders it
(sandboxed, ``messages``, ``add_generation_prompt``, ``bos_token``/``eos_token``). jinja2 is
imported only when a chat request comes; without it the route answers 501 naming it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ortserve.errors import Unsupported
from ortserve.http.tasks import BadField
from ortserve.registry.versions import ServedVersion

if TYPE_CHECKING:
    from ortserve.http.server import HttpContext


class Templates:
    """Each generation model's chat template (tokenizer_config.json ``chat_template``), read once
    per loaded version."""

    def __init__(self, ctx: HttpContext) -> None:
        self._ctx = ctx
        self._known: dict[str, tuple[str, ChatTemplate | None]] = {}  # model -> (fingerprint, it)

    async def get(self, served: ServedVersion) -> ChatTemplate:
        name = served.model_name
        known = self._known.get(name)
        if known is None or known[0] != served.fingerprint:
            folder = self._ctx.registry.entry(name).path / str(served.version)
            found = await asyncio.to_thread(ChatTemplate.read, folder / "tokenizer_config.json")
            known = self._known[name] = (served.fingerprint, found)
        if known[1] is None:
            raise BadField(
                "model", f"model '{name}' has no chat template (tokenizer_config.json "
                "'chat_template'): send a prompt to /v1/completions",
            )  # fmt: skip
        return known[1]


class ChatTemplate:
    """A Hugging Face chat template, rendered as transformers does (sandboxed jinja2, with
    ``messages``, ``add_generation_prompt`` and the special tokens)."""

    def __init__(self, source: str, tokens: dict[str, str]) -> None:
        self._source = source
        self._tokens = tokens

    @classmethod
    def read(cls, path: Path) -> ChatTemplate | None:
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        source = config.get("chat_template") if isinstance(config, dict) else None
        if isinstance(source, list):  # named templates: the default one
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = named.get("default")
        if not isinstance(source, str) or not source.strip():
            return None
        tokens = {key: _token(config.get(key)) for key in ("bos_token", "eos_token")}
        return cls(source, tokens)

    def render(self, messages: Any) -> str:
        try:
            from jinja2 import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise Unsupported(
                "/v1/chat/completions needs jinja2 on the server (pip install jinja2)"
            ) from None
        checked = _messages(messages)
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _template_refusal
        try:
            return env.from_string(self._source).render(
                messages=checked, add_generation_prompt=True, **self._tokens
            )
        except TemplateError as exc:
            raise BadField("messages", f"the model's chat template refused them: {exc}") from None


def _template_refusal(text: str) -> None:
    raise BadField("messages", f"the model's chat template refused them: {text}")


def _token(value: Any) -> str:
    if isinstance(value, dict):  # an AddedToken as tokenizer_config.json writes it
        value = value.get("content")
    return value if isinstance(value, str) else ""


def _messages(value: Any) -> list[dict[str, str]]:
    """``messages``: a non-empty list of {role, content}; content a string or text parts."""
    if not isinstance(value, list) or not value:
        raise BadField("messages", "'messages' must be a non-empty list of {role, content}")
    checked = []
    for index, item in enumerate(value):
        role = item.get("role") if isinstance(item, dict) else None
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, list):  # [{"type": "text", "text": ...}]
            parts = [p.get("text") for p in content if isinstance(p, dict)]
            if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
                raise BadField("messages", f"messages[{index}]: only text content is accepted")
            content = "".join(str(p) for p in parts)
        if not isinstance(role, str) or not isinstance(content, (str, type(None))):
            raise BadField(
                "messages", f"messages[{index}] must have a string 'role' and a text 'content'"
            )
        checked.append({"role": role, "content": content or ""})
    return checked
