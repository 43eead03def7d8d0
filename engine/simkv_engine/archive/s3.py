"""The archive in S3 (any endpoint speaking the S3 API) through boto3: bounded connect and read
timeouts and one retry, so that an unreachable or slow endpoint fails an operation in seconds,
and every botocore failure classified into an :class:`ArchiveError` of a counted kind."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from simkv_engine.archive.store import ArchiveConfigError, ArchiveError, ArchiveStore


def _s3_error(exc: Exception, what: str) -> ArchiveError:
    """Classify a boto3/botocore exception by kind."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ConnectTimeoutError | bx.ReadTimeoutError):
        return ArchiveError("timeout", f"{what}: {exc}")
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectionClosedError | bx.ProxyConnectionError
                  | bx.HTTPClientError):
        return ArchiveError("unreachable", f"{what}: {exc}")
    if isinstance(exc, bx.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound"):
            return ArchiveError("missing", f"{what}: no such object")
        return ArchiveError("other", f"{what}: {exc}")
    if isinstance(exc, bx.ResponseStreamingError | bx.IncompleteReadError):
        return ArchiveError("unreachable", f"{what}: {exc}")
    return ArchiveError("other", f"{what}: {type(exc).__name__}: {exc}")


class S3Store(ArchiveStore):
    """``s3://bucket/prefix`` through boto3. ``timeout_s`` bounds each connect and each read;
    ``attempts`` counts the first try (boto3's standard retry mode), so a dead or stalled endpoint
    fails an operation after about ``attempts * timeout_s`` seconds plus the retry backoff."""

    def __init__(self, url: str, *, endpoint_url: str | None = None, region: str | None = None,
                 timeout_s: float = 2.0, attempts: int = 2, storage_class: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        rest = url.removeprefix("s3://")
        bucket, _, prefix = rest.partition("/")
        if not url.startswith("s3://") or not bucket:
            raise ArchiveConfigError(f"archive {url!r}: expected s3://bucket[/prefix]")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.location = url
        self.storage_class = storage_class
        config = Config(connect_timeout=timeout_s, read_timeout=timeout_s,
                        retries={"max_attempts": attempts, "mode": "standard"},
                        s3={"addressing_style": "path"} if endpoint_url else None,
                        max_pool_connections=16)
        self.client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region,
                                                     config=config)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except Exception as exc:  # every botocore failure becomes a counted ArchiveError
            raise _s3_error(exc, f"{what} s3://{self.bucket}/{kwargs.get('Key', '')}") from None

    def put(self, name: str, body: bytes, meta: dict[str, str]) -> None:
        extra = {"StorageClass": self.storage_class} if self.storage_class else {}
        self._call("PUT", self.client.put_object, Key=self._key(name), Body=body, Metadata=meta,
                   ContentType="application/octet-stream", ChecksumAlgorithm="SHA256", **extra)

    def get(self, name: str) -> tuple[bytes, dict[str, str]]:
        key = self._key(name)
        resp = self._call("GET", self.client.get_object, Key=key)
        try:
            body = resp["Body"].read()
        except Exception as exc:
            raise _s3_error(exc, f"GET s3://{self.bucket}/{key}") from None
        return body, resp.get("Metadata", {})

    def head(self, name: str) -> tuple[int, dict[str, str]]:
        resp = self._call("HEAD", self.client.head_object, Key=self._key(name))
        return int(resp["ContentLength"]), resp.get("Metadata", {})

    def set_meta(self, name: str, meta: dict[str, str]) -> None:
        key = self._key(name)
        extra = {"StorageClass": self.storage_class} if self.storage_class else {}
        self._call("COPY", self.client.copy_object, Key=key, CopySource={"Bucket": self.bucket, "Key": key},
                   Metadata=meta, MetadataDirective="REPLACE", **extra)

    def delete(self, name: str) -> None:
        self._call("DELETE", self.client.delete_object, Key=self._key(name))

    def list(self, folder: str) -> Iterator[str]:
        root = self._key(folder) + "/"
        token: dict[str, str] = {}
        while True:
            resp = self._call("LIST", self.client.list_objects_v2, Prefix=root, **token)
            for obj in resp.get("Contents", []):
                yield folder + "/" + obj["Key"][len(root):]
            if not resp.get("IsTruncated"):
                return
            token = {"ContinuationToken": resp["NextContinuationToken"]}

    def check(self) -> None:
        try:
            self._call("HEAD", self.client.head_bucket)
        except ArchiveError as exc:
            if exc.kind in ("missing", "other"):
                raise ArchiveConfigError(
                    f"archive {self.location}: the bucket cannot be used ({exc})") from None
            # unreachable / timeout: the engine starts anyway; the index rebuild counts it and retries

    def close(self) -> None:
        self.client.close()
