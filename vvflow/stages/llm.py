"""A minimal client for OpenAI-compatible chat endpoints (Ollama, vLLM, llama.cpp server).

Plain ``urllib``: one POST to ``{base_url}/chat/completions``, images as base64 data URLs.
Every failure is an ``LLMUnavailable`` carrying a one-line reason, so that the stages can
fall back to their deterministic text and say why.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vvflow.stages.command import env_default

DEFAULT_TIMEOUT_SECONDS = 60.0
DETERMINISTIC = "deterministic"

Message = dict[str, Any]

_THINKING = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


class LLMUnavailable(Exception):
    """The chat endpoint is not configured, not reachable, or gave no usable answer."""


@dataclass(frozen=True)
class LLMSettings:
    """Where the chat endpoint is and how long to wait for it."""

    base_url: str | None = None
    model: str | None = None
    api_key: str | None = None
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS

    @property
    def configured(self) -> bool:
        """True when both a base URL and a model are set."""
        return bool(self.base_url and self.model)

    @property
    def generator(self) -> str:
        """The ``generator`` value for text this endpoint wrote."""
        return f"llm:{self.model}"

    def describe(self) -> dict[str, Any]:
        """The settings as recorded in an output JSON (never the key)."""
        return {
            "base_url": self.base_url,
            "model": self.model,
            "timeout_seconds": self.timeout_seconds,
        }

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LLMSettings:
        """Settings from the arguments that ``add_llm_arguments`` defined."""
        return cls(args.llm_base_url, args.llm_model, args.llm_api_key, args.llm_timeout_seconds)


def add_llm_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--llm-*`` options, each falling back to its ``VVFLOW_LLM_*`` variable."""
    group = parser.add_argument_group("OpenAI-compatible chat endpoint (optional)")
    group.add_argument(
        "--llm-base-url",
        default=env_default("VVFLOW_LLM_BASE_URL"),
        help="e.g. http://localhost:11434/v1 (env VVFLOW_LLM_BASE_URL)",
    )
    group.add_argument(
        "--llm-model", default=env_default("VVFLOW_LLM_MODEL"), help="env VVFLOW_LLM_MODEL"
    )
    group.add_argument(
        "--llm-api-key", default=env_default("VVFLOW_LLM_API_KEY"), help="env VVFLOW_LLM_API_KEY"
    )
    group.add_argument(
        "--llm-timeout-seconds",
        type=float,
        default=env_default("VVFLOW_LLM_TIMEOUT_SECONDS", str(DEFAULT_TIMEOUT_SECONDS)),
        help="per request (env VVFLOW_LLM_TIMEOUT_SECONDS; default %(default)s)",
    )


def image_part(path: Path) -> Message:
    """A chat content part carrying the JPEG at ``path`` as a data URL."""
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{encoded}"}}


def text_part(text: str) -> Message:
    """A chat content part carrying ``text``."""
    return {"type": "text", "text": text}


def chat(settings: LLMSettings, messages: list[Message], *, max_tokens: int = 200) -> str:
    """The assistant's answer to ``messages``; raises LLMUnavailable on any failure."""
    if not settings.configured or settings.base_url is None:
        raise LLMUnavailable("not configured (no base URL or model)")
    url = settings.base_url.rstrip("/") + "/chat/completions"
    if urllib.parse.urlsplit(url).scheme not in {"http", "https"}:
        raise LLMUnavailable(f"base URL {settings.base_url!r} is not http(s)")
    body = {
        "model": settings.model,
        "messages": messages,
        "temperature": 0.2,
        "max_tokens": max_tokens,
        "stream": False,
    }
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=settings.timeout_seconds) as response:  # noqa: S310
            payload = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as error:
        detail = error.read(300).decode("utf-8", "replace")
        raise LLMUnavailable(f"HTTP {error.code} from {url}: {_one_line(detail)}") from None
    except urllib.error.URLError as error:
        raise LLMUnavailable(f"unreachable: {url}: {error.reason}") from None
    except (TimeoutError, OSError) as error:
        raise LLMUnavailable(f"unreachable: {url}: {error}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LLMUnavailable(f"answer from {url} is not JSON") from None
    return _answer_text(payload, url)


def _answer_text(payload: Any, url: str) -> str:
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise LLMUnavailable(f"answer from {url} has no choices[0].message.content") from None
    if isinstance(content, list):  # some servers answer in content parts
        content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    # Reasoning models (qwen3, deepseek-r1) may put their thinking before the answer.
    text = " ".join(_THINKING.sub(" ", str(content or "")).split())
    if not text:
        raise LLMUnavailable(f"empty answer from {url}")
    return text


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]
