"""Chat templates: the file's tokenizer.chat_template rendered with jinja2's sandbox (HF conventions), or a
built-in one for files that carry none.

Built-ins, written from the formats the C++ programs produce:
- `bitnet`: bitnet.cpp's "bitnet-25" format (BitNet b1.58 2B-4T): `System: {s}`, `User: {u}<|eot_id|>Assistant: `,
  then the assistant's text.
- `llama3`: `<|start_header_id|>{role}<|end_header_id|>\\n\\n{content, trimmed}<|eot_id|>` per message and
  `<|start_header_id|>assistant<|end_header_id|>\\n\\n` as the generation prompt.
- `plain`: for vocabularies with no chat tokens at all (the shipped tiny model): `Role: content` paragraphs and
  `Assistant:` as the generation prompt; the model's EOS ends a reply.
A rendered prompt that starts with the BOS text loses it, because encode() adds BOS itself (as llama.cpp does).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from bitnet_tokenizers.errors import TokenizerError

BUILTIN_TEMPLATES = {
    "bitnet": (
        "{%- for m in messages -%}"
        "{%- if m['role'] == 'system' -%}{{ 'System: ' + m['content'] }}"
        "{%- elif m['role'] == 'user' -%}"
        "{{ 'User: ' + m['content'] + '<|eot_id|>' }}"
        "{%- if not loop.last or add_generation_prompt %}{{ 'Assistant: ' }}{% endif -%}"
        "{%- else -%}{{ m['content'] }}"
        "{%- endif -%}"
        "{%- endfor -%}"
    ),
    "llama3": (
        "{%- for m in messages -%}"
        "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif -%}"
    ),
    "plain": (
        "{%- for m in messages -%}"
        "{{ m['role'] | capitalize + ': ' + m['content'] | trim + '\n\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt %}{{ 'Assistant:' }}{% endif -%}"
    ),
}


def _raise(message: str) -> None:
    raise TokenizerError(f"chat template: {message}")


@lru_cache(maxsize=16)
def _compile(source: str):
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.filters.setdefault("tojson", lambda x, **kw: __import__("json").dumps(x, ensure_ascii=False, **kw))
    try:
        return env.from_string(source)
    except TemplateError as e:
        raise TokenizerError(f"the chat template does not parse: {e}") from None


def default_template_name(tok: Any) -> str | None:
    """The built-in for a file without a template: `bitnet` for BitNet architectures with the LLaMA-3
    vocabulary, `llama3` for other LLaMA-3 vocabularies, `plain` for vocabularies without chat tokens."""
    vocab = getattr(tok, "vocab", None)
    t2i = getattr(vocab, "token_to_id", {}) or {}
    if "<|eot_id|>" not in t2i:
        return "plain"
    if str(getattr(vocab, "arch", "") or "").startswith("bitnet"):
        return "bitnet"
    return "llama3" if "<|start_header_id|>" in t2i else "bitnet"


def render_chat(tok: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                template: str | None = None) -> str:
    """The prompt text for `messages` (each a dict with 'role' and 'content').

    template: None = the file's tokenizer.chat_template, else a built-in chosen for the vocabulary;
    a built-in name ('bitnet', 'llama3') or the text of a jinja template.
    """
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise TokenizerError(f"chat message {i} must be a dict with 'role' and 'content', got {m!r}")
    source = template if template is not None else getattr(tok, "chat_template", None)
    if source is None:
        name = default_template_name(tok)
        if name is None:
            raise TokenizerError(
                "the model file has no tokenizer.chat_template and no built-in template fits its vocabulary; "
                f"pass one of the built-ins {sorted(BUILTIN_TEMPLATES)} or a jinja template")
        source = name
    source = BUILTIN_TEMPLATES.get(source, source)
    bos = _token_text(tok, getattr(tok, "bos_id", None))
    eos = _token_text(tok, getattr(tok, "eos_id", None))
    from jinja2 import TemplateError

    try:
        text = _compile(source).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                       bos_token=bos, eos_token=eos)
    except TokenizerError:
        raise
    except TemplateError as e:
        raise TokenizerError(f"the chat template failed to render: {e}") from None
    if bos and text.startswith(bos):
        text = text[len(bos):]
    return text


def _token_text(tok: Any, i: int | None) -> str:
    if i is None:
        return ""
    try:
        return tok.token_to_piece(i).decode("utf-8", errors="replace")
    except Exception:
        return ""
