"""Helpers shared by the Space tests that serve the app: a launcher on a free loopback port, and raw HTTP calls."""

import json
import socket
from pathlib import Path

import httpx


def launch_on_a_free_port(demo, attempts: int = 5, **launch_options) -> str:
    """Serve on 127.0.0.1 at a port the OS says is free, so that no other server on this machine is reached.
    `launch_options` go to `demo.launch` (the app's own ones: `app.launch_options()`)."""
    options = {"ssr_mode": False, **launch_options}
    for _ in range(attempts):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            _, url, _ = demo.launch(
                server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **options
            )
            return url
        except OSError:  # taken between the probe and the launch: try another
            continue
    raise RuntimeError(f"No free port on 127.0.0.1 after {attempts} attempts")


def call_raw(url: str, api_name: str, data=None, *, body: bytes | str | None = None, timeout: float = 60):
    """POST `{"data": data}` (or exactly `body`) to `/gradio_api/call/<api_name>`, then read the event stream.

    Returns `("complete", outputs)` or `("error", message)` (message `None` when Gradio sent an empty error), or
    `("http", status)` when the POST itself was refused. This is the plain-HTTP way in, without gradio_client: what
    a caller can send that the client would never build.
    """
    content = body if body is not None else json.dumps({"data": data})
    base = url.rstrip("/")
    posted = httpx.post(
        f"{base}/gradio_api/call/{api_name}",
        content=content,
        headers={"Content-Type": "application/json"},
        timeout=timeout,
    )
    if posted.status_code != 200:
        return "http", posted.status_code
    event_id = posted.json()["event_id"]
    event = None
    with httpx.stream("GET", f"{base}/gradio_api/call/{api_name}/{event_id}", timeout=timeout) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                payload = json.loads(line.split(":", 1)[1])
                if event == "complete":
                    return "complete", payload
                return "error", payload.get("error") if isinstance(payload, dict) else payload
    raise AssertionError(f"The event stream of {api_name} ended without a result")


def upload_raw(url: str, path, timeout: float = 60) -> str:
    """POST one file to Gradio's upload route, as the page does; returns the path the server keeps it at."""
    with open(path, "rb") as handle:
        posted = httpx.post(
            f"{url.rstrip('/')}/gradio_api/upload", files=[("files", (Path(path).name, handle))], timeout=timeout
        )
    posted.raise_for_status()
    return posted.json()[0]


def file_payload(path: str) -> dict:
    """An uploaded file as an endpoint input."""
    return {"path": path, "meta": {"_type": "gradio.FileData"}}
