"""The server around the page: what every request meets before a handler runs, and how the app is launched.

- `guard_gradio_preprocessing`: each endpoint's payload is checked (`check_payload_form`) before Gradio's own input
  processing, which would open, copy or download what a payload names.
- `user_error`: the one way an exception becomes what the visitor reads (and what the log keeps).
- `RequestBodyLimits`: a body over its limit is refused with 413 before anything reads it.
- `launch_limits`: the limits of `demo.launch` (uploads, bodies, sessions, the queue) and the file cache's life
  (`disk.FileCache`: deleted leftovers at start, a sweeper while serving, everything deleted at exit).
"""

import inspect
import logging
from contextlib import asynccontextmanager

import gradio as gr
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse

from . import limits
from .disk import UploadAdmission
from .inputs import SCALAR_CHECKS, UNREADABLE_IMAGE, InputError, check_question, locate_image
from .video_inputs import UNREADABLE_VIDEO

logger = logging.getLogger("llava_codebook.space")


def check_example_index(index, count: int) -> int:
    """The index of one of `count` examples (what the page sends when one is picked), or an `InputError`."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise InputError(
            f"Pick one of the {count} examples: this endpoint takes the example's index, a whole number from 0 to "
            f"{count - 1}; got {repr(index)[:60]}."
        )
    return index


def check_payload_form(names: list, inputs: list, allowed_dirs, example_count: int = 0) -> None:
    """What must hold before Gradio processes an endpoint's inputs: their number, the image payload's form and path,
    and no other input being a JSON object or array (Gradio would treat one shaped like a file as a file). A name of
    `None` stands for a session-state input, which Gradio fills in itself: whatever was sent there is not read; the
    name `example` for the index of a picked example (`check_example_index`)."""
    if len(inputs) != len(names):
        listed = ", ".join(name for name in names if name)
        plural = "s" if len(names) != 1 else ""
        raise InputError(f"This endpoint takes {len(names)} input{plural}, in this order: {listed}; got {len(inputs)}.")
    for name, value in zip(names, inputs):
        if name is None:
            continue
        if name == "example":
            check_example_index(value, example_count)
        elif name == "image":
            if value is not None:
                locate_image(value, allowed_dirs)
        elif name == "video":
            if value is not None:
                try:
                    locate_image(value, allowed_dirs)
                except InputError as exc:
                    raise InputError(UNREADABLE_VIDEO if str(exc) == UNREADABLE_IMAGE else str(exc)) from None
        elif isinstance(value, (dict, list)):
            (SCALAR_CHECKS.get(name) or check_question)(value)  # refuses it, worded as for any other wrong type


def guard_gradio_preprocessing(demo: gr.Blocks, dependency_ids, allowed_dirs, examples=None) -> None:
    """Run `check_payload_form` before Gradio's own input processing for the given events, and word what Gradio
    still refuses there.

    Gradio processes inputs before the handler runs: it copies an uploaded file into its cache, downloads a URL,
    validates a file payload; and an exception there (or too few inputs) reaches the caller as an empty error. Blocks
    has no hook before that step, hence wrapping this instance's `preprocess_data`. After `check_payload_form` only
    the image can fail there (a path Gradio will not take): that gets the same `UNREADABLE_IMAGE` as any other
    refused path. `examples` (a `gr.Examples`): the event that loads one of them is guarded too, its one input being
    the index of an example.
    """
    stock_preprocess_data = demo.preprocess_data
    guarded = {}
    for fn_id in dependency_ids:
        if fn_id in demo.fns:
            block_fn = demo.fns[fn_id]
            names = list(inspect.signature(block_fn.fn).parameters)
            guarded[fn_id] = [None if block.stateful else name for name, block in zip(names, block_fn.inputs)]
    example_count = 0
    if examples is not None:
        guarded[examples.load_input_event["id"]] = ["example"]
        example_count = len(examples.examples)

    async def preprocess_data(block_fn, inputs, state, explicit_call=False):
        names = guarded.get(block_fn._id)
        if names is None:
            return await stock_preprocess_data(block_fn, inputs, state, explicit_call)
        try:
            check_payload_form(names, inputs, allowed_dirs, example_count)
        except InputError as exc:
            raise user_error(exc) from None
        try:
            return await stock_preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001 - a payload Gradio refuses is a refused path, worded as any other
            logger.info("Gradio refused a file payload (%s)", type(exc).__name__)
            unreadable = UNREADABLE_VIDEO if "video" in names else UNREADABLE_IMAGE
            raise gr.Error(unreadable, print_exception=False) from None

    demo.preprocess_data = preprocess_data


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def user_error(exc: Exception) -> gr.Error:
    """The `gr.Error` to show for `exc`. A user error (`InputError`) is logged as one INFO line and never with a
    traceback; anything else is unexpected and logged with its traceback, once (Gradio does not print it again)."""
    if isinstance(exc, InputError):
        logger.info("Refused a request: %s", _one_line(exc))
        return gr.Error(str(exc), print_exception=False)
    logger.exception("Unexpected error in the Space")
    return gr.Error(
        f"Something went wrong ({type(exc).__name__}). Try another image or other settings.", print_exception=False
    )


class RequestBodyLimits:
    """ASGI middleware: a request body over its limit gets 413 before anything reads or parses it.

    Gradio's `max_file_size` bounds each uploaded file, but nothing bounds a JSON call (a 50 MB question was parsed
    and held) or the number of files in one upload. The limit is `upload_bytes` on Gradio's upload route and
    `body_bytes` everywhere else; a declared Content-Length is judged at once, a chunked body as it arrives.
    """

    def __init__(self, app, body_bytes: int, upload_bytes: int):
        self.app = app
        self.body_bytes = body_bytes
        self.upload_bytes = upload_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        is_upload = scope["path"].rstrip("/").endswith("/gradio_api/upload")
        limit = self.upload_bytes if is_upload else self.body_bytes
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return await self._refuse(limit, scope, receive, send)
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException, so that FastAPI re-raises it from its body parsing instead of a 400.
                    raise HTTPException(413, self.refusal(limit))
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except HTTPException as exc:
            if exc.status_code != 413 or started:
                raise
            await self._refuse(limit, scope, receive, send)

    def refusal(self, limit: int) -> str:
        return (
            f"Request body too large: this Space takes at most {limit:,} bytes here. Send images as file uploads "
            f"(gradio_client: handle_file) of at most {(self.upload_bytes - limits.MULTIPART_SLACK) / limits.MIB:g} MB."
        )

    async def _refuse(self, limit: int, scope, receive, send):
        await PlainTextResponse(self.refusal(limit), status_code=413)(scope, receive, send)


@asynccontextmanager
async def serve_file_cache(server_app):
    """Lifespan of the served app: its file cache (`demo.file_cache`) cleared and swept while it serves, cleared at
    exit."""
    cache = server_app.get_blocks().file_cache
    cache.start()
    try:
        yield
    finally:
        cache.stop()


def launch_limits(demo: gr.Blocks) -> dict:
    """`demo.launch` arguments that bound what a request may bring and what the server keeps (uploads, bodies, the
    file cache, sessions), read from the environment."""
    upload_bytes = limits.max_upload_bytes() + limits.MULTIPART_SLACK
    middleware = [
        Middleware(RequestBodyLimits, body_bytes=limits.max_request_bytes(), upload_bytes=upload_bytes),
        Middleware(UploadAdmission, cache=demo.file_cache, upload_bytes=upload_bytes),
    ]
    return {
        "max_file_size": limits.max_upload_bytes(),
        "state_session_capacity": limits.max_sessions(),
        "app_kwargs": {"middleware": middleware, "lifespan": serve_file_cache},
    }
