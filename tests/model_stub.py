"""A loopback model server for agent tests: it speaks the Anthropic Messages API and plays scripted turns.

Why: the real Claude Code CLI (bundled in the claude-agent-sdk wheel) honours ANTHROPIC_BASE_URL, so
pointing it at this server lets tests run the real CLI, its real tools, permission rules, OS sandbox,
hooks and the SDK's in-process MCP tools, while the "model" is a script. Nothing of the CLI or SDK
is faked; only the model's answers are.

A script is chosen by a key that must occur in the conversation's first user message (the session's
prompt). Turn i of a script answers the request whose history holds i assistant messages, so the
server keeps no per-session state: a retried request, a resumed session (debug turn) or a session
re-run after a daemon crash gets the same answer. Past the last turn it answers "done".
Streaming (SSE) and plain JSON responses are served; the CLI falls back to JSON when a stream fails.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

MODEL = "claude-sonnet-4-5"
_ids = itertools.count(1)


def text(s: str) -> dict[str, Any]:
    return {"type": "text", "text": s}


def tool_use(name: str, **tool_input: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_stub_{next(_ids):06d}", "name": name, "input": tool_input}


def mcp(server: str, name: str, **tool_input: Any) -> dict[str, Any]:
    """A call of an SDK MCP tool, as the CLI names it: mcp__<server>__<tool>."""
    return tool_use(f"mcp__{server}__{name}", **tool_input)


@dataclass
class Turn:
    """One model response: content blocks (or a function of the request that returns them)."""

    blocks: list[dict[str, Any]] | Callable[[dict[str, Any]], list[dict[str, Any]]]
    delay_s: float = 0.0  # wait before answering (lets a test kill the caller mid-session)
    status: int = 200  # a non-200 status answers with an API error instead
    broken_stream: bool = False  # cut a streamed answer after message_start (the CLI then asks without streaming)

    def content(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        blocks = self.blocks(request) if callable(self.blocks) else self.blocks
        # fresh tool-use ids per answer: a resumed or re-run session must not see duplicate ids
        return [{**b, "id": f"toolu_stub_{next(_ids):06d}"} if b["type"] == "tool_use" else b for b in blocks]


def as_turns(turns: list[Turn | list[dict[str, Any]] | dict[str, Any]]) -> list[Turn]:
    out = []
    for t in turns:
        if isinstance(t, Turn):
            out.append(t)
        else:
            out.append(Turn([t] if isinstance(t, dict) else list(t)))
    return out


@dataclass
class ModelStub:
    """`with ModelStub({key: [turn, ...]}) as stub:` serves on stub.base_url until the block ends."""

    scripts: dict[str, list[Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)  # every Messages API request body, in order
    hits: list[str] = field(default_factory=list)  # every HTTP request as "METHOD path", whoever made it
    api_keys: set[str] = field(default_factory=set)  # the x-api-key headers the Messages API requests carried

    def __post_init__(self) -> None:
        self.scripts = {key: as_turns(turns) for key, turns in self.scripts.items()}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._closed = threading.Event()  # set on exit: a delayed answer stops waiting and is not sent

    def add(self, key: str, turns: list[Any]) -> None:
        with self._lock:
            self.scripts[key] = as_turns(turns)

    @property
    def base_url(self) -> str:
        assert self._server is not None, "stub not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def env(self) -> dict[str, str]:
        """What a process needs to talk to this stub instead of the real API."""
        return {"ANTHROPIC_BASE_URL": self.base_url, "ANTHROPIC_API_KEY": "sk-ant-stub"}

    def __enter__(self) -> "ModelStub":
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def parse_request(self) -> bool:
                ok = super().parse_request()
                stub.hits.append(f"{self.command} {self.path}")
                return ok

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if "count_tokens" in self.path:
                    self._json(200, {"input_tokens": _tokens(body)})
                    return
                if not self.path.startswith("/v1/messages"):
                    self.do_GET()
                    return
                with stub._lock:
                    stub.requests.append(body)
                    stub.api_keys.add(self.headers.get("x-api-key") or "")
                turn = stub.turn_for(body)
                if turn.delay_s and stub._closed.wait(turn.delay_s):
                    self.close_connection = True
                    return
                if turn.status != 200:
                    self._json(turn.status, {"type": "error", "error": {"type": "api_error", "message": "scripted"}})
                    return
                message = _message(body, turn.content(body))
                if body.get("stream"):
                    self._sse(message, cut=turn.broken_stream)
                else:
                    self._json(200, message)

            def _json(self, status: int, doc: dict[str, Any]) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _sse(self, message: dict[str, Any], cut: bool = False) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                events = _events(message)
                for event, data in events[:1] if cut else events:
                    self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()
                self.close_connection = True

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def turn_for(self, body: dict[str, Any]) -> Turn:
        messages = body.get("messages", [])
        first = next((m for m in messages if m.get("role") == "user"), {})
        prompt = json.dumps(first.get("content", ""))
        with self._lock:
            script = next((turns for key, turns in self.scripts.items() if key in prompt), [])
        index = sum(m.get("role") == "assistant" for m in messages)
        return script[index] if index < len(script) else Turn([text("done")])

    def answered(self, key: str) -> int:
        """How many model requests the session(s) keyed `key` made."""
        return sum(key in json.dumps(next((m for m in r.get("messages", []) if m.get("role") == "user"), {}))
                   for r in self.requests)


class _QuietServer(ThreadingHTTPServer):
    """Why: a caller killed mid-answer (the point of a delayed turn) is no error, and the default handler
    prints a traceback to the test process's stderr, where a later test's one-line check reads it."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _tokens(body: dict[str, Any]) -> int:
    """The stub's token count of a request: 4 characters a token, as a stand-in tokenizer."""
    return max(1, len(json.dumps(body.get("messages", []))) // 4 + len(json.dumps(body.get("system", ""))) // 4)


def _message(body: dict[str, Any], blocks: list[dict[str, Any]]) -> dict[str, Any]:
    stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
    return {"id": f"msg_stub_{next(_ids):06d}", "type": "message", "role": "assistant",
            "model": body.get("model") or MODEL, "content": blocks, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": _tokens(body), "output_tokens": max(1, len(json.dumps(blocks)) // 4),
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}


def _events(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The SSE events of one message: start, each block (tool input only as input_json_delta), delta, stop."""
    start = {**message, "content": [], "stop_reason": None, "usage": {**message["usage"], "output_tokens": 0}}
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": start})]
    for i, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "text", "text": ""}}))
            events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                   "delta": {"type": "text_delta", "text": block["text"]}}))
        else:
            events.append(("content_block_start", {"type": "content_block_start", "index": i, "content_block": {
                "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}))
            events.append(("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {
                "type": "input_json_delta", "partial_json": json.dumps(block["input"])}}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                     "usage": {"output_tokens": message["usage"]["output_tokens"]}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events
