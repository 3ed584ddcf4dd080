"""The chat template a bundle carries, and the proof that the phone renders it as transformers does.

LiteRT-LM renders the bundle's Jinja template with minijinja, not Jinja2, with `bos_token` ""
(it adds BOS as a token of its own), and some Jinja2 features render differently or not at all
there (loop controls, Python string methods, `is none`; docs/ENGINE.md "Chat template"). So a
build renders a fixed set of conversations (system prompt, several turns, image and audio parts)
both ways — transformers' `render_jinja_template` and the engine's own
`Conversation.render_message_to_string` on the bundle just written — and fails with a diff if
they differ: a template the engine cannot carry is caught on the desktop, with `--chat-template
FILE` as the way out.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from edge.errors import UserError

TEMPLATE_FILE = "chat_template.jinja"  # written into the artifact directory, carried by the bundle
_SENTINEL = "PROMPT-9b1f3c"  # no whitespace at its ends: templates trim the text


class ChatTemplateError(UserError):
    """The chat template is unreadable, or the engine renders it differently from transformers."""


def checkpoint_template(ckpt: str | Path, override: str | Path | None = None) -> str | None:
    """The Jinja chat template: `override` (--chat-template FILE), else the checkpoint's own."""
    if override is not None:
        path = Path(override)
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ChatTemplateError(f"--chat-template {path}: cannot read it ({e})") from None
    from converters.bundle import chat_template_jinja

    return chat_template_jinja(ckpt)


def render(template: str, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """`messages` rendered as transformers renders them (Jinja2), with the engine's bos_token ""."""
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered, _ = render_jinja_template(conversations=[messages], chat_template=template, bos_token="",
                                            eos_token="", add_generation_prompt=add_generation_prompt)
    except Exception as e:  # jinja2 errors and the template's own raise_exception
        raise ChatTemplateError(f"the chat template fails on a conversation: {type(e).__name__}: {e}") from None
    return rendered[0]


def prompt_affixes(template: str | None) -> str:
    """The single-turn `{prompt}` form of a Jinja template (what the simulator and the bundle's
    prompt_templates use): one user turn rendered with a sentinel for the text."""
    from converters.tokenizer_info import chat_template

    if template is None:
        return chat_template()
    text = render(template, [{"role": "user", "content": _SENTINEL}])
    if text.count(_SENTINEL) != 1:
        raise ChatTemplateError("the chat template does not put a user message's text into the prompt once")
    return text.replace(_SENTINEL, "{prompt}")


def conversations(image: str | Path | None, audio: str | Path | None) -> dict[str, list[dict]]:
    """The conversations a template is checked on (media parts only for the modalities built)."""
    def part(kind: str, path) -> list[dict]:
        return [{"type": kind, "path": str(Path(path).resolve())}] if path else []

    text = lambda t: {"type": "text", "text": t}  # noqa: E731
    system = {"role": "system", "content": [text("You are a concise assistant.")]}
    return {
        "one turn": [{"role": "user", "content": "What does a for statement do?"}],
        "system + one turn": [system, {"role": "user", "content": [text("Hello there.")]}],
        "system + three turns + media": [
            system,
            {"role": "user", "content": [*part("image", image), text("What is in this picture?")]},
            {"role": "assistant", "content": [text("A striped pattern.")]},
            {"role": "user", "content": [*part("audio", audio), text("  And what is said here?  ")]},
        ],
    }


def check_engine_renders(bundle: Path, template: str, image: str | Path | None, audio: str | Path | None) -> None:
    """Render every conversation with Jinja2 and with the engine on `bundle`; raise with a diff if
    any differs. The engine gets all but the last message as history, as an app resumes a chat."""
    from edge.runtime.engine import Engine

    engine = Engine(bundle)
    try:
        for name, messages in conversations(image, audio).items():
            want = render(template, messages)
            got = engine.render(messages)
            if got != want:
                diff = "\n".join(difflib.unified_diff(want.splitlines(), got.splitlines(), "transformers (Jinja2)",
                                                      "LiteRT-LM (minijinja)", lineterm=""))
                raise ChatTemplateError(
                    f"the phone's engine renders the chat template differently from transformers on the "
                    f"conversation {name!r}:\n{diff or repr((want, got))}\nThe engine's template language lacks "
                    "some Jinja2 features (docs/ENGINE.md \"Chat template\"): rewrite the template without them "
                    "and pass it with --chat-template FILE.")
    finally:
        engine.close()
