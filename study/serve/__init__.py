"""`study serve`: a live, read-only web explorer over the studies of a storage.

`create_app(storage, token=None, loopback=True)` is the ASGI app (used in-process by the tests);
`serve(storage, host=..., port=...)` runs it with uvicorn (``study serve``). See
docs/guide/explorer.md.
"""

from __future__ import annotations

from typing import Any


def create_app(storage: Any, **kwargs: Any) -> Any:
    from study.serve.app import create_app as _create

    return _create(storage, **kwargs)


def serve(storage: str, **kwargs: Any) -> int:
    from study.serve.app import serve as _serve

    return _serve(storage, **kwargs)
