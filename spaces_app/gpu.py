"""ZeroGPU: on a Space with ZeroGPU hardware, each model call borrows a GPU through `@spaces.GPU`; anywhere else the
calls run in place.

Imported by `app.py` before torch and anything that could initialise CUDA, as ZeroGPU requires.
"""

import importlib

try:
    import spaces

    gpu = spaces.GPU(duration=120)
    HAS_SPACES = True
except ImportError:
    HAS_SPACES = False

    def gpu(fn):
        return fn


# The backend the Space serves (`serve`): the one the `@spaces.GPU` worker runs model calls with.
_SERVED: dict = {}


def serve(backend) -> None:
    _SERVED["backend"] = backend


def function_reference(function) -> str:
    """`module:name` of a module-level function: what crosses to the GPU worker instead of the function."""
    return f"{function.__module__}:{function.__qualname__}"


def resolve(reference: str):
    module, name = reference.split(":")
    return getattr(importlib.import_module(module), name)


@gpu
def _on_served_gpu(reference: str, *args):
    """Run the function named by `reference` (`function_reference`) with the served backend and `args`, where the GPU
    is. On ZeroGPU this is a worker process that borrows a GPU, and arguments and results cross a process boundary:
    the backend (the model) is looked up, not passed."""
    return resolve(reference)(_SERVED["backend"], *args)


def on_model_device(backend, function, *args):
    """`function(backend, *args)`, through `@spaces.GPU` when this backend is the one the Space serves on ZeroGPU."""
    if HAS_SPACES and _SERVED.get("backend") is backend:
        return _on_served_gpu(function_reference(function), *args)
    return function(backend, *args)
