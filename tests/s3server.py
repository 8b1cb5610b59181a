"""A real S3 HTTP API on loopback for tests and benchmarks: moto's server, counting requests.

``S3Server`` runs moto's S3 implementation (``moto[server]``; no network) in a thread on a
free loopback port, creates a bucket, and counts every request by method and status, so
a test can assert what a publish sent and a benchmark can report it. Writers in other
processes reach it through the standard ``AWS_*`` environment variables (:meth:`env`).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

ACCESS_KEY = "corpusbatch-test-key-id"
SECRET_KEY = "cbS3secret-Zq81xWv4LpT7nR2yK9mD"  # recognisable: tests search for leaks


_PARTS = ("_versions", "_transactions", "_indices", "_deletions", "data", "__manifest")


def _part(environ: dict[str, Any]) -> str:
    """Which part of a Lance table a request is about (``list`` for a listing)."""
    if "list-type" in environ.get("QUERY_STRING", "") or "prefix=" in environ.get(
        "QUERY_STRING", ""
    ):
        return "list"
    path = environ.get("PATH_INFO", "")
    return next((p for p in _PARTS if f"/{p}/" in path), "other")


class S3Server:
    """moto's S3 on ``127.0.0.1:<free port>`` with one bucket; a context manager."""

    def __init__(self, bucket: str = "corpus") -> None:
        self.bucket = bucket
        self.requests: Counter[str] = Counter()  # "GET 200", "PUT 412", ...
        self.bytes: Counter[str] = Counter()  # "in" (request bodies), "out" (responses)
        # by what a Lance table's object is: "PUT data", "GET _indices", "GET list" ...
        self.parts: Counter[str] = Counter()
        self.part_bytes: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def uri(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def env(self) -> dict[str, str]:
        """The environment a writer or reader process needs (no flag carries any of it)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }

    def storage_options(self) -> dict[str, str]:
        """The same as LanceDB ``storage_options`` (the ``[storage]`` table's keys)."""
        return {
            "aws_endpoint": self.endpoint,
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
            "aws_region": "us-east-1",
            "allow_http": "true",
        }

    def count(self, methods: Iterable[str] = ("GET", "PUT", "POST", "DELETE", "HEAD")) -> int:
        """Requests so far with one of ``methods``."""
        wanted = set(methods)
        with self._lock:
            return sum(n for k, n in self.requests.items() if k.split()[0] in wanted)

    def reset(self) -> Counter[str]:
        """The counts so far (requests by method and status, and ``bytes in``/``bytes
        out``), and start counting from zero."""
        with self._lock:
            seen = Counter(self.requests)
            seen.update({f"bytes {k}": n for k, n in self.bytes.items()})
            seen.update({f"part {k}": n for k, n in self.parts.items()})
            seen.update({f"part-bytes {k}": n for k, n in self.part_bytes.items()})
            for counter in (self.requests, self.bytes, self.parts, self.part_bytes):
                counter.clear()
        return seen

    def _counting(self, app: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            def start(status: str, headers: Any, exc_info: Any = None) -> Any:
                sent = next((v for k, v in headers if k.lower() == "content-length"), "0")
                method = environ["REQUEST_METHOD"]
                up = int(environ.get("CONTENT_LENGTH") or 0)
                down = int(sent) if str(sent).isdigit() else 0
                part = f"{method} {_part(environ)}"
                with self._lock:
                    self.requests[f"{method} {status.split()[0]}"] += 1
                    self.bytes["in"] += up
                    self.bytes["out"] += down
                    self.parts[part] += 1
                    self.part_bytes[part] += up + down
                return start_response(status, headers, exc_info)

            return app(environ, start)

        return wrapped

    def __enter__(self) -> S3Server:
        import boto3
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server("127.0.0.1", 0, self._counting(app), threaded=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        ).create_bucket(Bucket=self.bucket)
        self.reset()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under ``prefix``."""
        return list(self.objects(prefix))

    def objects(self, prefix: str = "") -> dict[str, int]:
        """``key -> size in bytes`` of every object in the bucket under ``prefix``."""
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )
        out: dict[str, int] = {}
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            out.update((o["Key"], int(o["Size"])) for o in page.get("Contents", []))
        return out
