"""Helpers shared by the Space tests that serve the app."""

import socket


def launch_on_a_free_port(demo, attempts: int = 5) -> str:
    """Serve on 127.0.0.1 at a port the OS says is free, so that no other server on this machine is reached."""
    for _ in range(attempts):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            _, url, _ = demo.launch(
                server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False
            )
            return url
        except OSError:  # taken between the probe and the launch: try another
            continue
    raise RuntimeError(f"No free port on 127.0.0.1 after {attempts} attempts")
