"""Where image bytes live: files in a local folder (the embedded default) or objects in an
S3-compatible bucket (AWS S3, MinIO, Ceph; the tests use moto's standalone server).

Either way an image is stored whole or not at all: a file is written under a temporary name, synced
and renamed; an S3 PUT makes an object visible only once all of it arrived. The gateway lists an
image (its row in the task store) only after its bytes are stored, so a UUID never leads to half an
image. A backend that cannot be reached raises :class:`BlobsUnavailable`, an ``OSError``, which the
task runner answers with 503 and nothing kept.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class BlobsUnavailable(OSError):
    """The image store did not answer, or refused the operation."""


class ImageBlobs(Protocol):
    def write(self, name: str, data: bytes, media_type: str) -> None: ...

    def read(self, name: str) -> bytes | None:
        """The bytes, or None when there is no such object."""
        ...

    def delete(self, name: str) -> None:
        """Remove the object; absent is fine."""
        ...

    def link(self, name: str) -> str | None:
        """A URL a client may fetch the object from directly (presigned), or None: serve it here."""
        ...

    def check(self) -> None:
        """Raise BlobsUnavailable when the store cannot be used (readiness)."""
        ...


class LocalBlobs:
    """Files under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, data: bytes, media_type: str) -> None:
        path = self.root / name
        partial = path.with_name(path.name + ".part")
        try:
            with open(partial, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, path)
        except BaseException:  # a full disk: nothing half-written stays behind
            partial.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            raise

    def read(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def link(self, name: str) -> str | None:
        return None

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise BlobsUnavailable(f"{self.root} is not writable")


@dataclass(frozen=True)
class S3Settings:
    """An S3-compatible bucket. Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID`` and
    ``AWS_SECRET_ACCESS_KEY``, a profile, an instance or pod role); none of them is a flag, so they
    never show in a process list."""

    bucket: str
    prefix: str = "images/"
    endpoint_url: str | None = None  # MinIO, Ceph, moto: http(s)://HOST:PORT; None: AWS
    region: str | None = None
    presign_seconds: int = 0  # >0: /images/NAME redirects to a presigned URL valid this long
    timeout: float = 10.0  # seconds to connect and to read, each try

    @classmethod
    def from_url(cls, url: str, **options: Any) -> S3Settings:
        """``s3://BUCKET[/PREFIX]`` as the settings."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"an object store URL looks like s3://BUCKET[/PREFIX], got {url!r}")
        prefix = parts.path.strip("/")
        return cls(bucket=parts.netloc, prefix=f"{prefix}/" if prefix else "", **options)


class S3Blobs:
    """Objects in an S3-compatible bucket (boto3)."""

    def __init__(self, settings: S3Settings) -> None:
        import boto3
        from botocore.config import Config

        self.settings = settings
        config = Config(
            connect_timeout=settings.timeout,
            read_timeout=settings.timeout,
            retries={"max_attempts": 2, "mode": "standard"},  # a dead store: 503 in seconds, not minutes
            signature_version="s3v4",
        )
        self._client = boto3.client(
            "s3", endpoint_url=settings.endpoint_url, region_name=settings.region, config=config
        )

    def _key(self, name: str) -> str:
        return self.settings.prefix + name

    def _call(self, operation: str, **arguments: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client, operation)(Bucket=self.settings.bucket, **arguments)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(arguments.get("Key")) from None
            where = f"s3://{self.settings.bucket}"
            raise BlobsUnavailable(f"{where}: {operation} failed: {code or exc}") from None
        except BotoCoreError as exc:  # unreachable endpoint, timeouts, bad credentials config
            raise BlobsUnavailable(f"s3://{self.settings.bucket} is not reachable: {exc}") from None

    def write(self, name: str, data: bytes, media_type: str) -> None:
        self._call("put_object", Key=self._key(name), Body=data, ContentType=media_type)

    def read(self, name: str) -> bytes | None:
        try:
            answer = self._call("get_object", Key=self._key(name))
        except FileNotFoundError:
            return None
        try:
            return answer["Body"].read()
        except Exception as exc:  # noqa: BLE001 - a body cut off mid-way is the store failing
            raise BlobsUnavailable(f"s3://{self.settings.bucket}: reading {name} failed: {exc}") from None

    def delete(self, name: str) -> None:
        self._call("delete_object", Key=self._key(name))

    def link(self, name: str) -> str | None:
        if self.settings.presign_seconds <= 0:
            return None
        return self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.settings.bucket, "Key": self._key(name)},
            ExpiresIn=self.settings.presign_seconds,
        )

    def check(self) -> None:
        try:
            self._call("head_bucket")
        except FileNotFoundError:
            raise BlobsUnavailable(f"s3://{self.settings.bucket}: no such bucket") from None
