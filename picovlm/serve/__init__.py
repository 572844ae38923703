"""The HTTP server and its web page: `build_app(runtime, limits)` and `serve(...)` in `picovlm.serve.app`."""
